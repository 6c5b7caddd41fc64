"""The daemon's round child: one federated round on the device's real data and program.

``python -m agent.federated.device_round --job <file>`` reads a
:class:`~agent.core.federated_job.FederatedRoundJob` (written by
:mod:`agent.services.daemon.federated_round`), loads the device's federated state from
``state_dir`` (its copy of the global adapter and the round it replayed, its personal delta,
its step counter; the bundle's initial adapter the first time), runs
:meth:`~agent.federated.client_app.DeviceLearner.train_round` with the bundle's ExecuTorch
train program on the store's snapshot, saves the state and writes the reply. Whatever goes
wrong with the round's inputs (instructions that do not validate, a q the bundle has no
program for, no usable data) is a declined reply with the reason, never a crash.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

from agent.core.bundle import ADAPTER_DIR
from agent.core.federated_job import (
    CANDIDATE_DIR,
    GLOBAL_FILE,
    PERSONAL_FILE,
    ROUND_EVAL_FILE,
    STATE_FILE,
    FederatedRoundJob,
)
from agent.errors import MobizoError
from agent.federated.client_app import DeviceLearner, generator_differs
from agent.federated.messages import DeviceReply, RoundInstructions
from agent.federated.pool import GENERATOR
from agent.federated.replay import GlobalAdapter
from agent.io.atomic import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)



@dataclass
class DeviceState:
    """What a device keeps between rounds: global copy, personal delta, step counter."""

    bundle_id: str
    glob: GlobalAdapter
    personal: torch.Tensor
    steps_done: int = 0


def _npy(arr: torch.Tensor) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, arr.detach().to(torch.float32).numpy(), allow_pickle=False)
    return buf.getvalue()


def load_state(state_dir: Path, bundle_id: str, init_b: np.ndarray) -> DeviceState:
    """The saved state for ``bundle_id``; a fresh one (the bundle's initial adapter, round 0)
    when there is none or it belongs to another bundle."""
    fresh = DeviceState(bundle_id, GlobalAdapter(torch.from_numpy(init_b.copy())),
                        torch.zeros(init_b.size, dtype=torch.float32))
    try:
        meta = json.loads((state_dir / STATE_FILE).read_text())
        if meta.get("bundle_id") != bundle_id:
            log.info("federated state belongs to bundle %s: starting afresh",
                     meta.get("bundle_id"))
            return fresh
        glob = np.load(state_dir / GLOBAL_FILE, allow_pickle=False)
        personal = np.load(state_dir / PERSONAL_FILE, allow_pickle=False)
    except FileNotFoundError:
        return fresh
    if glob.size != init_b.size or personal.size != init_b.size:
        log.warning("federated state has %d values, the bundle %d: starting afresh",
                    glob.size, init_b.size)
        return fresh
    return DeviceState(bundle_id, GlobalAdapter(torch.from_numpy(glob.astype(np.float32)),
                                                int(meta["round"])),
                       torch.from_numpy(personal.astype(np.float32)),
                       int(meta.get("steps_done", 0)))


def save_state(state_dir: Path, state: DeviceState) -> None:
    """Write the arrays first and the state document last (it names the round they hold)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(state_dir / GLOBAL_FILE, _npy(state.glob.lora_b))
    atomic_write_bytes(state_dir / PERSONAL_FILE, _npy(state.personal))
    atomic_write_text(state_dir / STATE_FILE, json.dumps(
        {"bundle_id": state.bundle_id, "round": state.glob.round,
         "steps_done": state.steps_done}) + "\n")


def _declined(job: FederatedRoundJob, reason: str, at_round: int = 0) -> DeviceReply:
    ins = job.instructions
    rnd, base = ins.get("round"), ins.get("pool_base")
    return DeviceReply(
        round=rnd if isinstance(rnd, int) and rnd >= 1 else 1,
        bundle_id=str(ins.get("bundle_id") or "unknown"), generator=GENERATOR,
        pool_base=base if isinstance(base, int) and 0 <= base < (1 << 63) else 0,
        at_round=at_round, status="declined", reason=reason[:200])


def run_job(job: FederatedRoundJob) -> DeviceReply:
    """Run one round's job; the reply (declined with a reason when the inputs are bad)."""
    from agent.io.adapter_fs import AdapterValidator
    from agent.io.bundle_files import read_manifest
    from agent.training.data import BatchStream, load_dataset
    from agent.training.programs import choose_train_shape, load_program, resolve_batch
    from agent.training.tokenize import load_tokenizer

    try:
        ins = RoundInstructions.model_validate(job.instructions)
    except ValidationError as exc:
        return _declined(job, f"bad instructions: {exc.errors()[0]['msg']}")
    manifest = read_manifest(job.bundle)
    validator = AdapterValidator(job.bundle, manifest)
    init_b = validator.load_flat_b(job.bundle / ADAPTER_DIR)
    state = load_state(job.state_dir, manifest.bundle_id, np.asarray(init_b, np.float32))
    differs = generator_differs(ins, manifest.zo_generator)  # before paying for the program
    if differs:
        return _declined(job, differs, state.glob.round)
    try:
        batch = resolve_batch(manifest, "prge", ins.q, job.batch or None)
        shape = choose_train_shape(manifest, "prge", ins.q, batch)
        tokenizer = load_tokenizer(job.bundle, manifest.tokenizer.path)
        data = load_dataset(job.data, tokenizer, max_length=manifest.train.max_length,
                            pad_id=manifest.tokenizer.pad_token_id, heldout_share=0.0)
    except (MobizoError, ValueError) as exc:
        return _declined(job, str(exc), state.glob.round)
    program = load_program(job.bundle, job.backend, shape.slices, shape.batch, job.threads)
    stream = BatchStream(data.train, shape.batch, job.salt)
    learner = DeviceLearner(bundle_id=manifest.bundle_id, program=program,
                            batch_at=stream.batch_at, examples=len(data.train), salt=job.salt,
                            glob=state.glob, personal=state.personal, max_steps=job.max_steps,
                            max_pool=job.max_pool, steps_done=state.steps_done,
                            bundle_generator=manifest.zo_generator)
    reply = learner.train_round(ins)
    state = DeviceState(manifest.bundle_id, learner.glob, learner.personal, learner.steps_done)
    save_state(job.state_dir, state)
    if reply.status == "trained" and job.heldout is not None and job.against is not None:
        try:
            write_candidate(job, manifest, validator, tokenizer, learner.served)
        except (MobizoError, ValueError) as exc:  # the round stands; nothing is served
            log.warning("no served adapter from this round: %s", exc)
    return reply


def write_candidate(job: FederatedRoundJob, manifest: Any, validator: Any, tokenizer: Any,
                    served: torch.Tensor) -> None:
    """Write the served adapter (global + personal) and its held-out loss beside the
    serving adapter's, for the daemon's eval gate."""
    from agent.io.adapter_fs import write_adapter
    from agent.io.atomic import replace_dir, staging_dir
    from agent.training.data import load_dataset
    from agent.training.evaluate import heldout_losses
    from agent.training.programs import choose_eval_shape, load_program

    assert job.heldout is not None and job.against is not None
    pad = manifest.tokenizer.pad_token_id
    held = load_dataset(job.heldout, tokenizer, max_length=manifest.train.max_length,
                        pad_id=pad, heldout_share=0.0).train
    against = validator.load_flat_b(job.against)
    shape = choose_eval_shape(manifest, 2)
    program = load_program(job.bundle, job.backend, shape.slices, shape.batch, job.threads)
    cand, active = heldout_losses(program, held, [served, against], pad_id=pad)
    out = job.state_dir / CANDIDATE_DIR
    tmp = staging_dir(out)
    write_adapter(tmp, validator.layout, served.detach().numpy().astype(np.float32),
                  validator.a_tensors, base_model=manifest.base.source)
    replace_dir(tmp, out)
    atomic_write_text(job.state_dir / ROUND_EVAL_FILE, json.dumps(
        {"candidate_loss": cand, "active_loss": active, "examples": len(held)}) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Run the job file's round; write the reply; 0 unless the job file itself is bad."""
    parser = argparse.ArgumentParser(prog="python -m agent.federated.device_round")
    parser.add_argument("--job", type=Path, required=True, help="the round job (JSON)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        job = FederatedRoundJob.model_validate_json(args.job.read_text())
    except (OSError, ValidationError) as exc:
        print(f"error: cannot read the round job {args.job}: {exc}", file=sys.stderr)
        return 2
    reply = run_job(job)
    atomic_write_text(job.reply, reply.model_dump_json() + "\n")
    log.info("round %d: %s%s", reply.round, reply.status,
             f" ({reply.reason})" if reply.reason else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
