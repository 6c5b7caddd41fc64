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
from agent.services.inference.constrained import JsonConstraints
from agent.services.inference.detokenize import IncrementalDecoder, token_bytes
from agent.services.inference.prompt_cache import PromptCache
from agent.services.inference.sampling import (
    Sampler,
    SamplingDefaults,
    SamplingParams,
    StopScanner,
    TokenLogprob,
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
        self._pieces: dict[int, bytes] = {}

    @classmethod
    def from_dir(cls, path: Path, extra_eos: Sequence[int | None] = (),
                 defaults: SamplingDefaults | None = None) -> TextCodec:
        # tokenizer.json + the chat template in Jinja: no transformers in the service
        # (agent/io/bundle_tokenizer.py; the trainer loads it the same way)
        from agent.io.bundle_tokenizer import load_bundle_tokenizer

        return cls(load_bundle_tokenizer(path), extra_eos, defaults)

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

    def tokenize(self, text: str, add_special: bool = False) -> list[int]:
        """Token ids of ``text`` as is (``/tokenize``); ``add_special``: BOS and the like."""
        with self._lock:
            return [int(i) for i in self.tok.encode(text, add_special_tokens=add_special)]

    def piece(self, token: int) -> bytes:
        """The bytes one token stands for (logprobs, ``/tokenize`` pieces); cached."""
        cached = self._pieces.get(token)
        if cached is None:
            with self._lock:
                cached = self._pieces[token] = token_bytes(self.tok, token)
        return cached


@dataclass(frozen=True)
class TextDelta:
    """A piece of the reply for a streaming client, and the log-probabilities of the tokens
    whose text it completes (empty unless the request asked for logprobs)."""

    text: str
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class GenerationResult:
    text: str
    finish_reason: str  # "stop" | "length" | "cancelled"
    prompt_tokens: int
    completion_tokens: int
    prefill_s: float
    decode_s: float
    cached_tokens: int = 0  # prompt tokens whose KV state a previous request left resident
    logprobs: tuple[TokenLogprob, ...] = ()  # of the tokens whose text was emitted
    host_s: float = 0.0  # decode time outside the program: sampling, detokenizing, stops


class _Emitter:
    """Hands text to the client as the stop scanner releases it, with the log-probabilities
    of the tokens behind it: a token's entry goes out with the first text it completes, and
    the entries of tokens that only formed a stop string are dropped with it."""

    def __init__(self, stops: Sequence[str], on_delta: Callable[[TextDelta], None] | None
                 ) -> None:
        self.scanner = StopScanner(stops)
        self._on_delta = on_delta
        self._waiting: list[TokenLogprob] = []
        self.logprobs: list[TokenLogprob] = []

    def push(self, piece: str, entry: TokenLogprob | None, last: bool = False) -> None:
        if entry is not None:
            self._waiting.append(entry)
        text = self.scanner.finish(piece) if last else self.scanner.feed(piece)
        if not text and not (last and self._waiting and not self.scanner.stopped):
            return
        sent = tuple(self._waiting)
        self._waiting.clear()
        self.logprobs.extend(sent)
        if self._on_delta is not None:
            self._on_delta(TextDelta(text, sent))


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
        self._constraints: JsonConstraints | None = None

    def use_codec(self, codec: TextCodec) -> None:
        """Another bundle's tokenizer (the program was replaced): its JSON-schema masks are
        made again, and no cached prompt survives."""
        self.codec = codec
        self._constraints = None
        self.prompt_cache.clear()

    @property
    def constraints(self) -> JsonConstraints:
        """JSON-schema token masks for this tokenizer (``response_format``), made on first use."""
        if self._constraints is None:
            self._constraints = JsonConstraints(self.codec.tok, self.vocab_size,
                                                self.codec.eos_ids)
        return self._constraints

    @property
    def vocab_size(self) -> int:
        """Token ids the program scores (logit_bias and /detokenize are checked against it)."""
        return int(self.program.vocab_size)

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
        on_delta: Callable[[TextDelta], None] | None = None,
        cancelled: Callable[[], bool] = lambda: False,
        cache_key: str | None = None,
    ) -> GenerationResult:
        """Generate a completion of ``prompt_ids`` with adapter ``lora_b``.

        ``on_delta`` receives each new piece of text (stop strings never leak into it) with
        the log-probabilities of its tokens when ``params.logprobs`` asks for them.
        ``cache_key`` names the adapter (its version) for the prompt cache; None: no reuse.
        Generation that reaches the end of the context stops with ``"length"``.
        """
        n_prompt = len(prompt_ids)
        if not 0 < n_prompt < self.max_context:
            raise ValueError(f"prompt of {n_prompt} tokens does not fit the context "
                             f"of {self.max_context}")
        budget = min(params.max_tokens, self.max_context - n_prompt)
        constraint = None if params.json_schema is None else \
            self.constraints.for_schema(params.json_schema)
        sampler = Sampler(params, prompt_ids, constraint)
        emit = _Emitter(params.stop, on_delta)
        detok = IncrementalDecoder(self.codec.decode)
        clock = self._clock
        t0 = clock()
        logits, reused = self._prefill(prompt_ids, lora_b, cache_key)
        t1 = clock()
        out: list[int] = []
        fed = list(prompt_ids)  # what the program's KV cache holds, for the prompt cache
        finish, pos, in_program = "length", n_prompt, 0.0
        while len(out) < budget:
            token, entry = sampler.next(logits)
            if token in self.codec.eos_ids and not params.ignore_eos:
                finish = "stop"
                break
            out.append(token)
            sampler.accept(token)
            emit.push(detok.push(token), entry)
            if emit.scanner.stopped or sampler.done:
                finish = "stop"
                break
            if cancelled():
                finish = "cancelled"
                break
            if len(out) >= budget:
                break
            t = clock()
            logits = self.program.forward([token], pos, lora_b)
            in_program += clock() - t
            fed.append(token)
            pos += 1
        self.prompt_cache.store(cache_key, fed)
        emit.push(detok.flush(), None, last=True)
        decode_s = clock() - t1
        return GenerationResult(
            text=emit.scanner.text, finish_reason=finish, prompt_tokens=n_prompt,
            completion_tokens=len(out), prefill_s=t1 - t0, decode_s=decode_s,
            cached_tokens=reused, logprobs=tuple(emit.logprobs),
            host_s=decode_s - in_program,
        )
