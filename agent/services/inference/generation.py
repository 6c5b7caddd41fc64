"""Text generation with a KV cache over an inference program, and the tokenizer around it.

The program (``agent.io.runtime.InferProgram``: ``bundle/infer.pte`` on ExecuTorch/XNNPACK)
keeps the KV cache inside; one call feeds tokens at given positions and returns the logits of
the last one. The adapter is the flat LoRA-B vector passed on every call, so switching
adapters costs nothing here: the caller simply passes another array.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from agent.core.bundle import BundleManifest
from agent.core.prompt_format import PromptFormat, conversation
from agent.services.inference.detokenize import IncrementalDecoder
from agent.services.inference.prompt_cache import PromptCache
from agent.services.inference.sampling import (
    SamplingDefaults,
    SamplingParams,
    StopScanner,
    choose_token,
)


class InferProgramLike(Protocol):
    """What the generator needs from ``agent.io.runtime.InferProgram``."""

    max_context: int
    vocab_size: int

    def reset(self) -> None: ...

    def forward(self, token_ids: Sequence[int], start_pos: int,
                lora_b: np.ndarray) -> np.ndarray: ...


class TextCodec:
    """The bundle's Hugging Face tokenizer: prompt format, decode, stop ids, sampling defaults.

    Prompts are formatted by agent/core/prompt_format.py, the module the trainer uses, so an
    adapter is trained on exactly the prompts served here. Generation stops at any of
    :attr:`eos_ids`: the tokenizer's EOS, the chat template's end-of-turn token and every
    ``eos_token_id`` of the model's generation_config.json (the bundle manifest's
    ``generation``).

    Calls are serialised with a lock: HTTP threads encode while the worker decodes, and a
    fast tokenizer re-sets its truncation state on every encode ("Already borrowed" errors
    under concurrent use).
    """

    def __init__(self, tokenizer: Any, extra_eos: Sequence[int | None] = (),
                 defaults: SamplingDefaults | None = None) -> None:
        self.tok = tokenizer
        self._lock = threading.Lock()
        self.format = PromptFormat(tokenizer)
        eos = {*self.format.stop_ids, *extra_eos}
        self.eos_ids = frozenset(int(i) for i in eos if i is not None)
        self.has_chat_template = self.format.has_chat_template
        self.defaults = defaults or SamplingDefaults()

    @classmethod
    def from_dir(cls, path: Path, extra_eos: Sequence[int | None] = (),
                 defaults: SamplingDefaults | None = None) -> TextCodec:
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(str(path)), extra_eos, defaults)

    @classmethod
    def for_bundle(cls, bundle_dir: Path, manifest: BundleManifest) -> TextCodec:
        """The codec of a bundle: its tokenizer, stop ids and sampling defaults."""
        tok, gen = manifest.tokenizer, manifest.generation
        return cls.from_dir(Path(bundle_dir) / tok.path, [tok.eos_token_id, *gen.eos_token_ids],
                            SamplingDefaults.from_spec(gen))

    def encode_chat(self, messages: Sequence[Mapping[str, Any]]) -> list[int]:
        """Token ids of a chat prompt (``[{"role", "content"}, ...]``).

        Raises:
            PromptError: an unknown role, non-text content, or the chat template refused it.
        """
        turns = conversation(messages)
        with self._lock:
            return self.format.chat_ids(turns)

    def encode_prompt(self, prompt: str) -> list[int]:
        """Token ids of a raw completion prompt."""
        with self._lock:
            return self.format.completion_ids(prompt)

    def decode(self, ids: Sequence[int]) -> str:
        with self._lock:
            return str(self.tok.decode(list(ids), skip_special_tokens=True))


@dataclass(frozen=True)
class GenerationResult:
    text: str
    finish_reason: str  # "stop" | "length" | "cancelled"
    prompt_tokens: int
    completion_tokens: int
    prefill_s: float
    decode_s: float
    cached_tokens: int = 0  # prompt tokens whose KV state a previous request left resident


class Generator:
    """Runs one request at a time on the program (the caller serialises).

    With a :class:`PromptCache`, a request whose prompt starts with the tokens the program
    holds from the previous request (same adapter) prefills only the rest.
    """

    def __init__(self, program: InferProgramLike, codec: TextCodec,
                 clock: Callable[[], float] = time.perf_counter,
                 context_cap: int | None = None,
                 prompt_cache: PromptCache | None = None) -> None:
        self.program = program
        self.codec = codec
        self._clock = clock
        self._context_cap = context_cap
        self.prompt_cache = prompt_cache or PromptCache(0)

    @property
    def max_context(self) -> int:
        """Prompt + generated tokens: the program's KV cache, or less if capped by config."""
        exported = int(self.program.max_context)
        return exported if self._context_cap is None else min(exported, self._context_cap)

    def _prefill(self, prompt_ids: Sequence[int], lora_b: np.ndarray,
                 cache_key: str | None) -> tuple[np.ndarray, int]:
        """Feed the prompt (only what the resident sequence lacks); its last logits, reused."""
        reused = self.prompt_cache.lookup(cache_key, prompt_ids).reused
        self.prompt_cache.invalidate()  # until this request stores what it wrote
        if reused == 0:
            self.program.reset()
        return self.program.forward(list(prompt_ids[reused:]), reused, lora_b), reused

    def generate(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        lora_b: np.ndarray,
        *,
        on_delta: Callable[[str], None] | None = None,
        cancelled: Callable[[], bool] = lambda: False,
        cache_key: str | None = None,
    ) -> GenerationResult:
        """Generate a completion of ``prompt_ids`` with adapter ``lora_b``.

        ``on_delta`` receives each new piece of text (stop strings never leak into it).
        ``cache_key`` names the adapter (its version) for the prompt cache; None: no reuse.
        Generation that reaches the end of the context stops with ``"length"``.
        """
        n_prompt = len(prompt_ids)
        if not 0 < n_prompt < self.max_context:
            raise ValueError(f"prompt of {n_prompt} tokens does not fit the context "
                             f"of {self.max_context}")
        budget = min(params.max_tokens, self.max_context - n_prompt)
        rng = np.random.default_rng(params.seed)
        scanner = StopScanner(params.stop)
        detok = IncrementalDecoder(self.codec.decode)
        t0 = self._clock()
        logits, reused = self._prefill(prompt_ids, lora_b, cache_key)
        t1 = self._clock()
        out: list[int] = []
        fed = list(prompt_ids)  # what the program's KV cache holds, for the prompt cache
        text, finish, pos = "", "length", n_prompt
        while len(out) < budget:
            token = choose_token(logits, params, rng)
            if token in self.codec.eos_ids and not params.ignore_eos:
                finish = "stop"
                break
            out.append(token)
            text += detok.push(token)
            delta = scanner.feed(text)
            if delta and on_delta is not None:
                on_delta(delta)
            if scanner.stopped:
                finish = "stop"
                break
            if cancelled():
                finish = "cancelled"
                break
            if len(out) >= budget:
                break
            logits = self.program.forward([token], pos, lora_b)
            fed.append(token)
            pos += 1
        self.prompt_cache.store(cache_key, fed)
        text += detok.flush()
        tail = scanner.finish(text) if not scanner.stopped else ""
        if tail and on_delta is not None:
            on_delta(tail)
        return GenerationResult(
            text=text[: scanner.emitted], finish_reason=finish, prompt_tokens=n_prompt,
            completion_tokens=len(out), prefill_s=t1 - t0, decode_s=self._clock() - t1,
            cached_tokens=reused,
        )
