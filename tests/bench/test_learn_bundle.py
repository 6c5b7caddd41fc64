"""``mobizo-bench learn --bundle DIR`` on bundles with a real tokenizer and chat template.

Tiny random models with the real vocabulary size, tokenizer, chat template and model-card
generation_config.json (tests/real_bundles.py): a Llama with Llama 3's, a Qwen3 (tied
embeddings, q/k norms) with Qwen3's ChatML template and its thinking block, a Gemma 3 with
Gemma 3's (262,144 embeddings, ``<end_of_turn>``, no system role). Each is benchmarked end to
end with the real runtime, scoring held-out loss and greedy exact match of the answers, and
serves a chat whose stored interaction the trainer tokenizes to the prompt ids it served.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest

from agent.bench import learn
from agent.io.bundle_files import read_manifest
from agent.io.http import Client
from agent.services.inference.generation import TextCodec
from agent.services.inference.service import InferenceService, ServeConfig
from agent.training import data as D
from tests.real_bundles import CASES, real_bundle_path

pytestmark = pytest.mark.runtime


@pytest.fixture(scope="module", params=sorted(CASES))
def real_bundle(request: pytest.FixtureRequest, bundle_cache_dir: Path) -> tuple[str, Path]:
    return request.param, real_bundle_path(bundle_cache_dir, request.param)


def test_the_bundle_carries_the_models_generation_config(real_bundle: tuple[str, Path]
                                                         ) -> None:
    case, bundle = real_bundle
    eos, (temperature, top_p) = CASES[case][4:]
    manifest = read_manifest(bundle)
    assert manifest.model.vocab_size == CASES[case][2]["vocab_size"]
    assert manifest.tokenizer.has_chat_template
    assert manifest.generation.eos_token_ids == eos
    assert (manifest.generation.temperature, manifest.generation.top_p) == (temperature, top_p)
    assert json.loads((bundle / "generation_config.json").read_text())["top_p"] == top_p
    codec = TextCodec.for_bundle(bundle, manifest)
    assert set(eos) <= codec.eos_ids and codec.defaults.temperature == temperature


def test_learn_runs_on_the_bundle_and_scores_exact_match(real_bundle: tuple[str, Path],
                                                         tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    learn.add_arguments(parser)
    out = tmp_path / "learn.json"
    args = parser.parse_args([
        "--bundle", str(real_bundle[1]), "--tasks", "personal-facts", "--train-size", "8",
        "--heldout-size", "4", "--forwards", "8", "--eval-points", "1",
        "--methods", "mezo:q=1,b=2", "--methods", "fo:b=2,opt=adam", "--json", str(out)])
    assert learn.main(args) == 0
    doc = json.loads(out.read_text())
    assert [r["method"] for r in doc["results"]] == ["mezo", "fo-lora"]
    for r in doc["results"]:
        assert math.isfinite(r["start_loss"]) and math.isfinite(r["final_loss"])
        assert r["final_accuracy"] is not None and 0.0 <= r["final_accuracy"] <= 1.0
        assert r["final_token_accuracy"] is not None


def test_a_served_chat_trains_on_the_prompt_it_was_served(real_bundle: tuple[str, Path],
                                                          tmp_path: Path) -> None:
    _, bundle = real_bundle
    svc = InferenceService(bundle, tmp_path, ServeConfig(listen="127.0.0.1:0"))
    svc.start()
    try:
        assert svc.address is not None and svc.store is not None
        client = Client(*svc.address, token=svc.token)
        messages = [{"role": "system", "content": "Be brief."},
                    {"role": "user", "content": [{"type": "text", "text": "Where is my bike?"}]}]
        reply = client.post("/v1/chat/completions", {"messages": messages, "max_tokens": 3,
                                                     "temperature": 0})
        assert reply.status == 200, reply.text
        served = reply.json["usage"]["prompt_tokens"]
        assert client.post("/v1/feedback", {"id": reply.json["id"], "correction": "Garage."}
                           ).status == 200
        svc.store.flush()
        examples, _ = svc.store.examples_since(0, split="all")
        prompt_ids = svc.codec.encode_chat(svc.store.get(reply.json["id"])["messages"])
    finally:
        svc.stop()
    stats = D.DataStats()
    ds = D.build_dataset(D.read_interactions([json.dumps(e.to_json()) for e in examples], stats),
                         svc.codec.tok, max_length=64, pad_id=0, heldout_share=0.0, stats=stats)
    (example,) = ds.train
    assert len(prompt_ids) == served and list(example.tokens[:served]) == prompt_ids
    assert example.mask[:served].sum() == 0 and example.mask[served] == 1
