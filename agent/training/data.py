"""Interaction data for ZO training: JSON Lines → tokenized, masked, split, batched examples.

One line is one interaction, in one of these forms::

    {"prompt": "...", "response": "...", "feedback": "up"|"down", "correction": "..."}
    {"messages": [{"role": "user", "content": "..."}, ..., {"role": "assistant", ...}],
     "feedback": ..., "correction": ...}
    {"kind": "completion", "prompt": "...", "response": "...", ...}

The first is one user turn; the last a raw completion, as the store exports served
``/v1/completions``. Token ids come from agent/core/prompt_format.py, the service's format.
The target is ``correction`` when present, else the response (the last assistant message).
A ``"down"`` without a correction has no good target and is dropped. The loss covers the
response tokens only (``mask[t] = 1`` where token t is a target; column 0 is never one).

Sequences are padded / truncated to the bundle's ``max_length``: the prompt loses tokens on
its left first (the most recent context matters most), then the response on its right.
Malformed lines are counted and skipped with a warning naming the line; duplicates (same
prompt and target) are kept once. The held-out split is a pure function of each example's
content hash, so the same interaction is always on the same side, whatever the file order.
Batches are a pure function of (seed, step): epoch e visits the training set in a permutation
seeded by (seed, e), and step t takes stream positions ``t·b .. t·b+b−1`` — a resumed run
sees exactly the batches the uninterrupted one would have.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agent.core.prompt_format import Message, PromptError, PromptFormat, Tokenizer, conversation
from agent.errors import DataError

log = logging.getLogger(__name__)

_MAX_LINE_WARNINGS = 20
_KINDS = ("chat", "completion")


class MalformedLine(ValueError):
    """One line of the data file is not a usable interaction; the message says why."""


@dataclass(frozen=True)
class Interaction:
    """A parsed line: the conversation (or raw completion prompt) and the reply to learn."""

    line_no: int
    messages: tuple[Message, ...]
    target: str
    completion: str | None = None  # a raw completion prompt; then ``messages`` is empty

    @property
    def id(self) -> str:
        """Content hash: the identity used for de-duplication and the held-out split."""
        if self.completion is not None:
            key = json.dumps(["completion", self.completion, self.target], ensure_ascii=False)
        else:
            key = json.dumps([list(map(list, self.messages)), self.target], ensure_ascii=False)
        return hashlib.sha256(key.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Example:
    """One tokenized interaction, padded to the program's length."""

    id: str
    tokens: np.ndarray  # [T] int64
    mask: np.ndarray  # [T] float32, 1 where the token is a target
    truncated: bool

    @property
    def n_targets(self) -> int:
        return int(self.mask.sum())


@dataclass
class DataStats:
    """What happened to each line of the file."""

    lines: int = 0
    blank: int = 0
    malformed: int = 0
    malformed_lines: list[int] = field(default_factory=list)
    dropped_feedback: int = 0  # "down" without a correction
    duplicates: int = 0
    dropped_empty: int = 0  # no response token left after truncation
    truncated: int = 0
    train: int = 0
    heldout: int = 0

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["malformed_lines"] = self.malformed_lines[:_MAX_LINE_WARNINGS]
        return d


@dataclass(frozen=True)
class Dataset:
    train: tuple[Example, ...]
    heldout: tuple[Example, ...]
    stats: DataStats
    max_length: int

    @property
    def fingerprint(self) -> str:
        """Hash of the training and held-out ids in order: a checkpoint is valid only for it."""
        h = hashlib.sha256()
        for ex in self.train:
            h.update(ex.id.encode())
        h.update(b"|")
        for ex in self.heldout:
            h.update(ex.id.encode())
        h.update(str(self.max_length).encode())
        return h.hexdigest()[:16]


def _text(obj: dict[str, Any], key: str, required: bool) -> str | None:
    v = obj.get(key)
    if v is None:
        if required:
            raise MalformedLine(f"missing {key!r}")
        return None
    if not isinstance(v, str):
        raise MalformedLine(f"{key!r} must be a string, got {type(v).__name__}")
    return v


def parse_interaction(obj: Any, line_no: int) -> Interaction | None:
    """One decoded JSON line → an Interaction; None when feedback says to drop it.

    Raises:
        MalformedLine: the object is not an interaction of either form.
    """
    if not isinstance(obj, dict):
        raise MalformedLine(f"expected a JSON object, got {type(obj).__name__}")
    feedback = obj.get("feedback")
    if feedback not in (None, "up", "down"):
        raise MalformedLine(f"'feedback' must be \"up\" or \"down\", got {feedback!r}")
    correction = _text(obj, "correction", required=False)
    kind = obj.get("kind", "chat")
    if kind not in _KINDS:
        raise MalformedLine(f"'kind' must be \"chat\" or \"completion\", got {kind!r}")
    completion = None
    if "messages" in obj:
        if kind == "completion":
            raise MalformedLine("a completion has a 'prompt', not 'messages'")
        context, response = _conversation(obj["messages"])
    else:
        prompt = _text(obj, "prompt", required=True) or ""
        response = _text(obj, "response", required=correction is None) or ""
        context = (("user", prompt),) if kind == "chat" else ()
        completion = prompt if kind == "completion" else None
    if correction is not None:
        return Interaction(line_no, context, correction, completion)
    if feedback == "down":
        return None
    return Interaction(line_no, context, response, completion)


def _conversation(msgs: Any) -> tuple[tuple[Message, ...], str]:
    """A ``messages`` list → (the turns before the reply, the reply)."""
    if not isinstance(msgs, list) or not msgs:
        raise MalformedLine("'messages' must be a non-empty list")
    try:
        parsed = conversation(msgs)
    except PromptError as exc:
        raise MalformedLine(str(exc)) from exc
    if parsed[-1][0] != "assistant":
        raise MalformedLine("the last message must be the assistant's reply")
    if len(parsed) < 2:
        raise MalformedLine("'messages' has a reply but no prompt before it")
    return parsed[:-1], parsed[-1][1]


def read_interactions(lines: Iterable[str], stats: DataStats) -> list[Interaction]:
    """Parse JSONL text lines; malformed ones are counted in ``stats`` and warned about."""
    out: list[Interaction] = []
    for line_no, raw in enumerate(lines, start=1):
        stats.lines += 1
        if not raw.strip():
            stats.blank += 1
            continue
        try:
            item = parse_interaction(json.loads(raw), line_no)
        except (json.JSONDecodeError, MalformedLine) as exc:
            stats.malformed += 1
            stats.malformed_lines.append(line_no)
            if stats.malformed <= _MAX_LINE_WARNINGS:
                log.warning("skipping malformed line %d: %s", line_no, exc)
            continue
        if item is None:
            stats.dropped_feedback += 1
        else:
            out.append(item)
    if stats.malformed > _MAX_LINE_WARNINGS:
        log.warning("%d malformed lines skipped in all (first %d named above)",
                    stats.malformed, _MAX_LINE_WARNINGS)
    return out


def pack(prompt: Sequence[int], response: Sequence[int], max_length: int, pad_id: int,
         bos_id: int | None = None) -> tuple[np.ndarray, np.ndarray, bool] | None:
    """Pad/truncate prompt+response to ``max_length``; mask the response tokens.

    The prompt loses tokens on its left first (keeping a leading BOS), keeping at least one
    token so the first response token has a context; then the response loses its tail.
    Returns None when no response token is left.
    """
    p, r = list(prompt), list(response)
    truncated = len(p) + len(r) > max_length
    if truncated:
        keep_p = max(min(len(p), 1), max_length - len(r))
        if len(p) > keep_p:
            lead = [p[0]] if bos_id is not None and p and p[0] == bos_id and keep_p >= 1 else []
            p = lead + p[len(p) - (keep_p - len(lead)):]
        r = r[: max_length - len(p)]
    tokens = np.full(max_length, pad_id, dtype=np.int64)
    mask = np.zeros(max_length, dtype=np.float32)
    n = len(p) + len(r)
    tokens[: len(p)] = p
    tokens[len(p): n] = r
    mask[len(p): n] = 1.0
    mask[0] = 0.0  # token 0 has no context: never a target
    if mask.sum() == 0:
        return None
    return tokens, mask, truncated


def heldout_fraction(example_id: str) -> float:
    """Where an example falls in [0, 1): compared with the held-out share."""
    return int(hashlib.sha256(example_id.encode()).hexdigest()[:8], 16) / 16**8


def split_heldout(
    examples: Sequence[Example], share: float
) -> tuple[list[Example], list[Example]]:
    """Stable split by content hash; with share > 0 and ≥ 2 examples both sides are non-empty."""
    train = [e for e in examples if heldout_fraction(e.id) >= share]
    held = [e for e in examples if heldout_fraction(e.id) < share]
    if share > 0 and len(examples) >= 2:
        if not held:
            pick = min(train, key=lambda e: heldout_fraction(e.id))
            train.remove(pick)
            held.append(pick)
        if not train:
            pick = max(held, key=lambda e: heldout_fraction(e.id))
            held.remove(pick)
            train.append(pick)
    return train, held


def build_dataset(
    interactions: Sequence[Interaction],
    tokenizer: Tokenizer,
    *,
    max_length: int,
    pad_id: int,
    heldout_share: float,
    stats: DataStats,
) -> Dataset:
    """Tokenize, de-duplicate, pack and split interactions."""
    seen: set[str] = set()
    examples: list[Example] = []
    bos = getattr(tokenizer, "bos_token_id", None)
    fmt = PromptFormat(tokenizer)
    for it in interactions:
        ex_id = it.id
        if ex_id in seen:
            stats.duplicates += 1
            continue
        seen.add(ex_id)
        ids = _token_ids(fmt, it, stats)
        if ids is None:
            continue
        packed = pack(*ids, max_length, pad_id, bos)
        if packed is None:
            stats.dropped_empty += 1
            log.warning("line %d has no response tokens within %d tokens; dropped",
                        it.line_no, max_length)
            continue
        tokens, mask, truncated = packed
        stats.truncated += int(truncated)
        examples.append(Example(ex_id, tokens, mask, truncated))
    train, held = split_heldout(examples, heldout_share)
    stats.train, stats.heldout = len(train), len(held)
    return Dataset(tuple(train), tuple(held), stats, max_length)


def _token_ids(fmt: PromptFormat, it: Interaction,
               stats: DataStats) -> tuple[list[int], list[int]] | None:
    """(prompt, response) ids as the service prompts; None (counted) if the template refuses."""
    try:
        if it.completion is not None:
            return fmt.completion_ids(it.completion), fmt.response_ids(it.target,
                                                                       completion=True)
        return fmt.chat_ids(it.messages), fmt.response_ids(it.target)
    except PromptError as exc:
        stats.malformed += 1
        stats.malformed_lines.append(it.line_no)
        if stats.malformed <= _MAX_LINE_WARNINGS:
            log.warning("skipping line %d: %s", it.line_no, exc)
        return None


def load_dataset(
    path: Path,
    tokenizer: Tokenizer,
    *,
    max_length: int,
    pad_id: int,
    heldout_share: float = 0.1,
) -> Dataset:
    """Read a JSONL file into a Dataset.

    Raises:
        DataError: the file is missing, or nothing usable is left for training.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist; give a JSON Lines file of "
                        '{"prompt": ..., "response": ...} objects')
    if not 0.0 <= heldout_share < 1.0:
        raise DataError(f"held-out share must be in [0, 1), got {heldout_share}")
    stats = DataStats()
    with path.open(encoding="utf-8", errors="replace") as fh:
        interactions = read_interactions(fh, stats)
    ds = build_dataset(interactions, tokenizer, max_length=max_length, pad_id=pad_id,
                       heldout_share=heldout_share, stats=stats)
    if not ds.train:
        bad = ""
        if stats.malformed_lines:
            shown = ", ".join(map(str, stats.malformed_lines[:10]))
            bad = f"; malformed lines: {shown}{' ...' if stats.malformed > 10 else ''}"
        raise DataError(
            f"{path} has no usable training examples ({stats.lines} lines: "
            f"{stats.malformed} malformed, {stats.dropped_feedback} 'down' without correction, "
            f"{stats.dropped_empty} without response tokens, {stats.duplicates} duplicates, "
            f"{stats.heldout} held out){bad}; add interactions with a non-empty response"
        )
    return ds


class BatchStream:
    """Deterministic epoch-based batches: batch t is a pure function of (seed, t)."""

    def __init__(self, examples: Sequence[Example], batch: int, seed: int) -> None:
        if not examples:
            raise DataError("cannot batch an empty dataset")
        self.examples = tuple(examples)
        self.batch = batch
        self.seed = seed
        self._orders: dict[int, np.ndarray] = {}

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The permutation of the training set that epoch ``epoch`` walks through."""
        if epoch not in self._orders:
            if len(self._orders) > 4:
                self._orders.clear()
            rng = np.random.default_rng([self.seed & 0xFFFFFFFF, self.seed >> 32, epoch])
            self._orders[epoch] = rng.permutation(len(self.examples))
        return self._orders[epoch]

    def cursor(self, step: int) -> tuple[int, int]:
        """(epoch, position within the epoch) where step ``step`` starts."""
        return divmod(step * self.batch, len(self.examples))

    def indices(self, step: int) -> list[int]:
        n = len(self.examples)
        out = []
        for pos in range(step * self.batch, (step + 1) * self.batch):
            epoch, k = divmod(pos, n)
            out.append(int(self.epoch_order(epoch)[k]))
        return out

    def batch_at(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens [b, T] int64 and loss mask [b, T] float32 of step ``step``."""
        return collate([self.examples[i] for i in self.indices(step)])


def collate(examples: Sequence[Example]) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.from_numpy(np.stack([e.tokens for e in examples]))
    mask = torch.from_numpy(np.stack([e.mask for e in examples]))
    return tokens, mask


def padding_example(max_length: int, pad_id: int) -> Example:
    """A row with no targets: fills a partial batch without changing the masked mean."""
    return Example("pad", np.full(max_length, pad_id, dtype=np.int64),
                   np.zeros(max_length, dtype=np.float32), False)
