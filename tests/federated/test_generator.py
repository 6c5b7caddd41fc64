"""The ZO direction generator: recorded in the bundle's manifest, and a round that names
another one declined by the device (by the learner, and by the round child before it loads
the program)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.core.bundle import manifest_from_json
from agent.core.federated_job import FederatedRoundJob
from agent.federated.device_round import run_job
from agent.federated.messages import RoundInstructions
from agent.federated.pool import GENERATOR
from agent.io.bundle_files import read_manifest
from tests.federated.fleet_support import BUNDLE, P, analytic_device

OTHER = "torch-0.1.0:cpu-generator:splitmix64:randn-float32"


def _instructions(generator: str = GENERATOR, bundle_id: str = BUNDLE) -> RoundInstructions:
    return RoundInstructions(round=1, bundle_id=bundle_id, generator=generator, pool_base=5,
                             pool_size=P, steps=1, q=2, lr=0.01, eps=1e-3, clip=10.0)


@pytest.mark.parametrize(("round_gen", "bundle_gen", "declined_with"), [
    (GENERATOR, None, None),  # an older bundle records none: only the device's is compared
    (GENERATOR, GENERATOR, None),
    (OTHER, None, "this device's"),
    (GENERATOR, OTHER, "the bundle's " + OTHER),
])
def test_a_round_is_declined_when_its_generator_differs(round_gen: str, bundle_gen: str | None,
                                                        declined_with: str | None) -> None:
    device = analytic_device(1)
    device.bundle_generator = bundle_gen
    reply = device.train_round(_instructions(round_gen))
    if declined_with is None:
        assert reply.status == "trained"
    else:
        assert reply.status == "declined" and reply.reason.startswith("generator differs")
        assert declined_with in reply.reason and device.rounds_trained == []


def test_the_exporter_records_the_generator_and_older_manifests_read_as_none(
        starter_bundle: Path) -> None:
    assert read_manifest(starter_bundle).zo_generator == GENERATOR
    raw = json.loads((starter_bundle / "manifest.json").read_text())
    del raw["zo_generator"]
    older = manifest_from_json(raw, bundle_dir=starter_bundle,
                               path=starter_bundle / "manifest.json")
    assert older.zo_generator is None


@pytest.mark.runtime
def test_the_round_child_declines_a_bundle_exported_with_another_generator(
        starter_bundle: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    for part in starter_bundle.iterdir():  # the starter bundle, its manifest from elsewhere
        if part.name != "manifest.json":
            (bundle / part.name).symlink_to(part)
    raw = json.loads((starter_bundle / "manifest.json").read_text())
    (bundle / "manifest.json").write_text(json.dumps({**raw, "zo_generator": OTHER}))
    bundle_id = read_manifest(bundle).bundle_id  # the generator is not part of the identity
    assert bundle_id == read_manifest(starter_bundle).bundle_id
    job = FederatedRoundJob(bundle=bundle, data=tmp_path / "never-read.jsonl",
                            state_dir=tmp_path / "state", reply=tmp_path / "reply.json",
                            instructions=_instructions(bundle_id=bundle_id).model_dump(
                                mode="json"), salt=1)
    reply = run_job(job)
    assert (reply.status, reply.round, reply.bundle_id) == ("declined", 1, bundle_id)
    assert reply.reason.startswith("generator differs") and OTHER in reply.reason
    assert not (tmp_path / "state").exists()  # nothing ran, nothing was saved
