"""Choosing the next token and finding stop strings. Pure numpy, unit tested.

One :class:`Sampler` per request turns the program's logits into the next token; it keeps the
state the penalties need (the recent window, the generated counts). Per token, in this order:

1. **logit bias** (OpenAI's ``logit_bias``): added to the logits (-100 bans, +100 forces
   unless a penalty below pulls the token back); first, as in llama.cpp's sampler chain, so
   the penalties act on what the bias favours;
2. **repetition penalty** (Keskar et al. 2019, arXiv 1909.05858; transformers' and llama.cpp's
   ``repetition_penalty``): every token id in the last ``penalty_last_n`` ids of prompt +
   output has its logit divided by the penalty when positive, multiplied when negative;
3. **presence / frequency penalties** (OpenAI's): ``logit[j] -= c[j] * frequency +
   (c[j] > 0) * presence``, ``c[j]`` the count of ``j`` in the generated tokens;
4. log-probabilities, when asked, are taken here: log-softmax of these processed logits,
   before temperature and truncation (what vLLM calls processed logprobs without the
   temperature; with temperature 0 they are the distribution greedy picks from);
5. temperature 0 → greedy (argmax); otherwise softmax(logits / T), then, as transformers'
   warpers run: **top-k** (Fan et al. 2018, arXiv 1805.04833; ties at the k-th all stay),
   **top-p** (nucleus, Holtzman et al. 2019, arXiv 1904.09751), **min-p** (Nguyen et al. 2024,
   arXiv 2407.01082: drop tokens under ``min_p`` × the top probability), renormalise, sample.

Cost: a request that sets nothing beyond greedy pays one argmax; the penalties touch only the
ids they name (the window is at most ``penalty_last_n`` ids); sampling works on the top-k
candidates when top-k is set. Everything else is a few numpy passes over the vocabulary.

Stop strings (:class:`StopScanner`): the text is cut before the first stop string; while
streaming, a tail that could still grow into a stop string is held back so it is never sent
and then retracted. Only the held tail and the new piece are searched per token.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from agent.core.bundle import GenerationSpec


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. ``temperature == 0`` means greedy; the defaults change nothing."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k cut
    min_p: float = 0.0  # 0: no min-p cut
    repetition_penalty: float = 1.0  # 1: off
    penalty_last_n: int = 64  # the repetition penalty's window (llama.cpp's default)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias)
    logprobs: int | None = None  # None: none; k >= 0: the chosen token's and k alternatives
    json_schema: str | None = None  # JSON text of a schema the output must match
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


@dataclass(frozen=True)
class TokenLogprob:
    """The chosen token's log-probability and the ``top`` likeliest (id, logprob), best first."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


class TokenConstraint(Protocol):
    """A grammar the output must follow (agent/services/inference/constrained.py)."""

    def allowed(self) -> np.ndarray: ...

    def accept(self, token: int) -> None: ...

    @property
    def done(self) -> bool: ...


class Sampler:
    """The next token of one request, with the state its penalties need.

    Args:
        params: the request's sampling parameters.
        prompt_ids: the prompt, for the repetition penalty's window.
        constraint: a grammar; tokens outside it get -inf after step 3.
    """

    def __init__(self, params: SamplingParams, prompt_ids: Sequence[int] = (),
                 constraint: TokenConstraint | None = None) -> None:
        self.params = params
        self.constraint = constraint
        self.rng = np.random.default_rng(params.seed)
        self._repeat = params.repetition_penalty != 1.0 and params.penalty_last_n > 0
        last_n = max(params.penalty_last_n, 1)
        self._window: deque[int] = deque(list(prompt_ids)[-last_n:] if self._repeat else (),
                                         maxlen=last_n)
        self._count_penalty = params.presence_penalty != 0 or params.frequency_penalty != 0
        self._counts: Counter[int] = Counter()
        self._bias_ids = np.array([i for i, _ in params.logit_bias], dtype=np.int64)
        self._bias = np.array([b for _, b in params.logit_bias], dtype=np.float32)
        self._modifies = (self._repeat or self._count_penalty or bool(params.logit_bias)
                          or constraint is not None)

    def accept(self, token: int) -> None:
        """Record a generated token (the penalties see it from the next step on)."""
        if self._repeat:
            self._window.append(token)
        if self._count_penalty:
            self._counts[token] += 1
        if self.constraint is not None:
            self.constraint.accept(token)

    @property
    def done(self) -> bool:
        """The constraint's grammar is complete: nothing but end-of-sequence may follow."""
        return self.constraint is not None and self.constraint.done

    def processed(self, logits: np.ndarray) -> np.ndarray:
        """The logits after bias and penalties (steps 1–3); the input itself when none apply."""
        x = np.asarray(logits, dtype=np.float32).reshape(-1)
        if not self._modifies:
            return x
        x = x.copy()
        p = self.params
        if self._bias_ids.size:
            np.add.at(x, self._bias_ids, self._bias)
        if self._repeat and self._window:
            ids = np.fromiter(set(self._window), dtype=np.int64)
            v = x[ids]
            x[ids] = np.where(v > 0, v / p.repetition_penalty, v * p.repetition_penalty)
        if self._count_penalty and self._counts:
            ids = np.fromiter(self._counts.keys(), dtype=np.int64, count=len(self._counts))
            c = np.fromiter(self._counts.values(), dtype=np.float32, count=len(self._counts))
            x[ids] -= c * p.frequency_penalty + p.presence_penalty
        if self.constraint is not None:
            x[~self.constraint.allowed()] = -np.inf
        return x

    def next(self, logits: np.ndarray) -> tuple[int, TokenLogprob | None]:
        """The next token from float logits [vocab], and its log-probabilities when asked.

        The caller :meth:`accept`\\ s the token once it keeps it.
        """
        x = self.processed(logits)
        token = pick(x, self.params, self.rng)
        k = self.params.logprobs
        return token, None if k is None else logprobs_of(x, token, k)


def logprobs_of(x: np.ndarray, token: int, k: int) -> TokenLogprob:
    """``token``'s log-softmax under logits ``x`` and the ``k`` likeliest tokens' (k <= vocab)."""
    m = float(x.max())
    lse = m + float(np.log(np.exp(x - m).sum(dtype=np.float64)))
    top: tuple[tuple[int, float], ...] = ()
    if k > 0:
        k = min(k, x.shape[0])
        ids = np.argpartition(x, x.shape[0] - k)[-k:]
        ids = ids[np.argsort(-x[ids], kind="stable")]
        top = tuple((int(i), float(x[i]) - lse) for i in ids if np.isfinite(x[i]))
    return TokenLogprob(token, float(x[token]) - lse, top)


def pick(x: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """Step 5 of the module docstring over processed logits ``x``.

    Each cut narrows ``ids`` (the candidates' vocabulary ids) so that later steps and the
    draw work on the survivors only, not on the whole vocabulary.
    """
    if params.temperature <= 0:
        return int(np.argmax(x))
    ids: np.ndarray | None = None
    if 0 < params.top_k < x.shape[0]:  # order does not depend on T > 0: cut before scaling
        kth = np.partition(x, x.shape[0] - params.top_k)[-params.top_k]
        ids = np.flatnonzero(x >= kth)  # ties at the k-th all stay
        x = x[ids]
    probs = np.exp((x - x.max()) / np.float32(params.temperature))
    probs /= probs.sum(dtype=np.float64)
    if params.top_p < 1.0:
        kept, probs = nucleus(probs, params.top_p)
        ids = kept if ids is None else ids[kept]
    if params.min_p > 0.0:
        kept = np.flatnonzero(probs >= params.min_p * probs.max())
        probs = probs[kept]
        ids = kept if ids is None else ids[kept]
    cumulative = np.cumsum(probs, dtype=np.float64)
    j = min(int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right")),
            cumulative.shape[0] - 1)
    return j if ids is None else int(ids[j])


def nucleus(probs: np.ndarray, top_p: float, first: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The smallest most-likely set with mass >= ``top_p``: its indices and probabilities
    (renormalised), the same set :func:`top_p_filter` keeps.

    The nucleus of a trained language model is usually a few dozen tokens: sort the
    ``first`` likeliest (a partition, O(vocab)); only when their mass falls short, sort all.
    """
    n = probs.shape[0]
    m = min(first, n)
    while True:
        cand = np.argpartition(probs, n - m)[n - m:] if m < n else np.arange(n)
        order = cand[np.argsort(-probs[cand])]  # quicksort: 10x a stable sort here
        ranked = probs[order]
        cumulative = np.cumsum(ranked, dtype=np.float64)
        if cumulative[-1] >= top_p or m == n:
            keep = cumulative - ranked < top_p  # the top token is always kept
            return order[keep], ranked[keep] / ranked[keep].sum(dtype=np.float64)
        m = n


def choose_token(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """The next token id from float logits [vocab], for a request without history."""
    sampler = Sampler(params)
    return pick(sampler.processed(logits), params, rng)


def top_p_filter(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Zero all but the smallest most-likely set with mass >= top_p; renormalised."""
    order = np.argsort(-probs, kind="stable")
    cumulative = np.cumsum(probs[order])
    # keep every token whose preceding mass is < top_p (so the top token is always kept)
    keep = cumulative - probs[order] < top_p
    out = np.zeros_like(probs)
    out[order[keep]] = probs[order[keep]]
    return out / out.sum()


def min_p_filter(probs: np.ndarray, min_p: float) -> np.ndarray:
    """Zero the tokens under ``min_p`` × the top probability; renormalised (top always kept)."""
    out = np.where(probs >= min_p * probs.max(), probs, 0.0)
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
    """Incremental stop-string handling over text that arrives in pieces.

    Only the text not yet emitted is searched: what was emitted ends with no proper prefix of
    a stop string (that tail is held back), so no stop string can start inside it. The held
    tail is shorter than the longest stop string, so each token costs O(new piece + longest
    stop), not O(output).
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.stopped = False
        self._pending = ""  # decoded, not yet emitted
        self._emitted: list[str] = []
        self.emitted = 0  # characters handed out

    @property
    def text(self) -> str:
        """Everything emitted so far (the response, once finished)."""
        return "".join(self._emitted)

    def _take(self, end: int) -> str:
        delta, self._pending = self._pending[:end], self._pending[end:]
        if delta:
            self._emitted.append(delta)
            self.emitted += len(delta)
        return delta

    def feed(self, piece: str) -> str:
        """Add the newly decoded ``piece``; return the new part safe to emit."""
        if self.stopped:
            return ""
        self._pending += piece
        cut = find_stop(self._pending, self.stops)
        if cut is not None:
            self.stopped = True
            return self._take(cut)
        end = safe_prefix_len(self._pending, self.stops)
        # an incomplete UTF-8 sequence decodes to U+FFFD; wait for the rest of it
        while end > 0 and self._pending[end - 1] == "\ufffd":
            end -= 1
        return self._take(end)

    def finish(self, piece: str = "") -> str:
        """The remainder once generation ended (``piece``: text the decoder still held)."""
        if self.stopped:
            return ""
        self._pending += piece
        cut = find_stop(self._pending, self.stops)
        self.stopped = cut is not None
        return self._take(len(self._pending) if cut is None else cut)
