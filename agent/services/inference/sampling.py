"""Choosing the next token and finding stop strings. Pure numpy, unit tested.

- temperature 0 → greedy (argmax); otherwise softmax(logits / T).
- top-k (Fan et al. 2018, arXiv 1805.04833): keep the k most likely tokens (0: all of them).
- top-p (nucleus sampling, Holtzman et al. 2019, arXiv 1904.09751): keep the smallest set of
  most likely tokens whose probability mass reaches p, renormalise, sample.
- stop strings: the text is cut before the first stop string; while streaming, a tail that
  could still grow into a stop string is held back so it is never sent and then retracted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from agent.core.bundle import GenerationSpec


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. ``temperature == 0`` means greedy."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k cut
    max_tokens: int = 128
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False


@dataclass(frozen=True)
class SamplingDefaults:
    """What a request that sets no sampling field gets: the model's generation_config.json.

    Without one, OpenAI's defaults (temperature 1, top_p 1) and no top-k cut.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0

    @classmethod
    def from_spec(cls, spec: GenerationSpec) -> SamplingDefaults:
        """The bundle manifest's ``generation`` (exported from generation_config.json)."""
        base = cls()
        return cls(
            temperature=base.temperature if spec.temperature is None else spec.temperature,
            top_p=base.top_p if spec.top_p is None else spec.top_p,
            top_k=base.top_k if spec.top_k is None else spec.top_k,
        )


def choose_token(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """The next token id from float logits [vocab]."""
    logits = np.asarray(logits, dtype=np.float64).reshape(-1)
    if params.temperature <= 0:
        return int(np.argmax(logits))
    scaled = logits / params.temperature
    if 0 < params.top_k < scaled.shape[0]:
        kth = np.partition(scaled, -params.top_k)[-params.top_k]
        scaled = np.where(scaled >= kth, scaled, -np.inf)  # ties at the k-th all stay
    scaled -= scaled.max()
    probs = np.exp(scaled)
    probs /= probs.sum()
    if params.top_p < 1.0:
        probs = top_p_filter(probs, params.top_p)
    return int(rng.choice(probs.shape[0], p=probs))


def top_p_filter(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Zero all but the smallest most-likely set with mass >= top_p; renormalised."""
    order = np.argsort(-probs, kind="stable")
    cumulative = np.cumsum(probs[order])
    # keep every token whose preceding mass is < top_p (so the top token is always kept)
    keep = cumulative - probs[order] < top_p
    out = np.zeros_like(probs)
    out[order[keep]] = probs[order[keep]]
    return out / out.sum()


def find_stop(text: str, stops: Sequence[str]) -> int | None:
    """Index where the earliest stop string starts in ``text``, or None."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits) if hits else None


def safe_prefix_len(text: str, stops: Sequence[str]) -> int:
    """How much of ``text`` can be emitted now: everything except a tail that is a proper
    prefix of some stop string (it may still become one with the next token)."""
    held = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                held = max(held, k)
                break
    return len(text) - held


class StopScanner:
    """Incremental stop-string handling over a growing decoded text."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.emitted = 0  # characters already handed out
        self.stopped = False

    def feed(self, text: str) -> str:
        """Given the full decoded text so far, return the new part safe to emit."""
        if self.stopped:
            return ""
        cut = find_stop(text, self.stops)
        if cut is not None:
            self.stopped = True
            end = cut
        else:
            end = safe_prefix_len(text, self.stops)
        # an incomplete UTF-8 sequence decodes to U+FFFD; wait for the rest of it
        while end > self.emitted and text[end - 1] == "\ufffd" and cut is None:
            end -= 1
        if end <= self.emitted:
            return ""
        delta = text[self.emitted:end]
        self.emitted = end
        return delta

    def finish(self, text: str) -> str:
        """The remainder once generation ended without a stop string."""
        if self.stopped:
            return ""
        end = len(text)
        delta = text[self.emitted:end]
        self.emitted = end
        return delta
