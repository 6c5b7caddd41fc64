"""generation_config.json honoured: every eos id stops generation, its sampling defaults apply
when a request sets none; the exporter reads it (and refuses a broken one)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.core.bundle import GenerationSpec
from agent.errors import ExportError
from agent.services.inference.generation import Generator, TextCodec
from agent.services.inference.protocol import ChatCompletionRequest, CompletionRequest
from agent.services.inference.sampling import SamplingDefaults, SamplingParams
from exporter.checkpoint import Checkpoint, load_generation_config
from exporter.families import family_for
from tests.real_tokenizers import FIXTURES

# From the model cards (tests/fixtures/tokenizers/README.md); top_k 50 is transformers' default
# when a sampling config leaves it out (Llama 3's does).
EXPECTED = {
    "qwen3": GenerationSpec(eos_token_ids=(151645, 151643), temperature=0.6, top_p=0.95,
                            top_k=20),
    "llama3": GenerationSpec(eos_token_ids=(128001, 128009), temperature=0.6, top_p=0.9,
                             top_k=50),
    "gemma3": GenerationSpec(eos_token_ids=(1, 106), temperature=1.0, top_p=0.95, top_k=64),
}
VOCAB = {"qwen3": 151936, "llama3": 128256, "gemma3": 262144}


def _checkpoint(tmp_path: Path, generation: dict[str, Any] | str | None) -> Checkpoint:
    tmp_path.mkdir(parents=True, exist_ok=True)
    if generation is not None:
        text = generation if isinstance(generation, str) else json.dumps(generation)
        (tmp_path / "generation_config.json").write_text(text)
    return Checkpoint(tmp_path, family_for("llama"), {}, ())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_model_card_configs_are_read(tmp_path: Path, name: str) -> None:
    shutil.copy(FIXTURES / name / "generation_config.json", tmp_path)
    ckpt = Checkpoint(tmp_path, family_for("llama"), {}, ())
    assert load_generation_config(ckpt, VOCAB[name]) == EXPECTED[name]


def test_greedy_sampling_unset_and_no_file(tmp_path: Path) -> None:
    greedy = _checkpoint(tmp_path / "a", {"do_sample": False, "eos_token_id": 7,
                                          "temperature": 0.3})
    assert load_generation_config(greedy, 100) == GenerationSpec(eos_token_ids=(7,),
                                                                 temperature=0.0)
    written = _checkpoint(tmp_path / "c", {"bos_token_id": 1, "eos_token_id": 2})
    assert load_generation_config(written, 100) == GenerationSpec(eos_token_ids=(2,))
    assert load_generation_config(_checkpoint(tmp_path / "b", None), 100) == GenerationSpec()


@pytest.mark.parametrize("bad, says", [
    ("{not json", "not valid JSON"),
    ({"eos_token_id": [1, 500]}, "below the model's 100"),
    ({"eos_token_id": "2"}, "eos_token_id"),
    ({"do_sample": True, "top_p": 3.0}, "out of range"),
])
def test_a_broken_generation_config_is_refused(tmp_path: Path, bad: Any, says: str) -> None:
    with pytest.raises(ExportError, match=says):
        load_generation_config(_checkpoint(tmp_path, bad), 100)


def test_defaults_apply_only_where_the_request_sets_nothing() -> None:
    defaults = SamplingDefaults.from_spec(EXPECTED["qwen3"])
    assert defaults == SamplingDefaults(temperature=0.6, top_p=0.95, top_k=20)
    bare = ChatCompletionRequest.model_validate({"messages": [{"role": "user",
                                                               "content": "x"}]})
    p = bare.sampling_params(defaults, max_tokens=5)
    assert (p.temperature, p.top_p, p.top_k, p.max_tokens) == (0.6, 0.95, 20, 5)
    own = CompletionRequest.model_validate({"prompt": "x", "temperature": 0, "top_p": 0.5,
                                            "top_k": 0})
    p = own.sampling_params(defaults, max_tokens=5)
    assert (p.temperature, p.top_p, p.top_k) == (0, 0.5, 0)
    assert SamplingDefaults.from_spec(GenerationSpec()) == SamplingDefaults()  # OpenAI's


class ScriptedProgram:
    """An inference program whose greedy choice is a fixed script of token ids."""

    def __init__(self, script: list[int], vocab_size: int) -> None:
        self.script, self.vocab_size, self.max_context = script, vocab_size, 64
        self.calls = 0

    def reset(self) -> None:
        self.calls = 0

    def forward(self, token_ids: Any, start_pos: int, lora_b: np.ndarray) -> np.ndarray:
        logits = np.zeros(self.vocab_size, np.float32)
        logits[self.script[min(self.calls, len(self.script) - 1)]] = 1.0
        self.calls += 1
        return logits


def test_every_eos_id_stops_generation(real_tokenizer: Any, real_tokenizer_name: str) -> None:
    name = real_tokenizer_name
    spec = EXPECTED[name]
    codec = TextCodec(real_tokenizer, [real_tokenizer.eos_token_id, *spec.eos_token_ids])
    word = real_tokenizer.encode("Hello", add_special_tokens=False)[0]
    for eos in spec.eos_token_ids:
        program = ScriptedProgram([word, word, eos, word], VOCAB[name])
        result = Generator(program, codec).generate(
            [word], SamplingParams(temperature=0, max_tokens=10), np.zeros(1, np.float32))
        assert (result.finish_reason, result.completion_tokens) == ("stop", 2), eos
