"""What the interaction store holds: the records, their table rows and the trainer's JSONL form.

Pure (no database): :class:`Interaction` is what the inference service records,
:class:`Example` what the trainer reads back; :func:`is_heldout` is the stable held-out split;
:func:`interaction_from_json` / :func:`row_to_json` are ``data import`` / ``data export``.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from agent.errors import DataError

Rating = Literal["up", "down"]

# How a rating is stored in the ``feedback`` column (NULL: not rated).
FEEDBACK_VALUE: dict[Rating | None, int | None] = {"up": 1, "down": -1, None: None}


@dataclass(frozen=True)
class Interaction:
    """One served (or imported) exchange."""

    response: str
    kind: str = "chat"  # "chat" | "completion"
    messages: Sequence[dict[str, Any]] | None = None
    prompt: str | None = None
    adapter_version: str | None = None
    latency_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    feedback: Rating | None = None
    correction: str | None = None
    source: str = "served"
    id: str = field(default_factory=lambda: new_interaction_id())
    created_at: float = field(default_factory=time.time)

    def input_sha(self) -> str:
        payload = json.dumps([self.kind, self.messages, self.prompt], sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()


@dataclass(frozen=True)
class Example:
    """A training example for the trainer: an input and the target response."""

    id: str
    target: str
    messages: list[dict[str, Any]] | None
    prompt: str | None
    change_seq: int

    def to_json(self) -> dict[str, Any]:
        """The trainer's JSONL format (agent/training/data.py): a chat is the conversation
        ending with the assistant's reply; a completion is ``prompt`` + ``response``."""
        if self.messages is not None:
            turns = [*self.messages, {"role": "assistant", "content": self.target}]
            return {"id": self.id, "messages": turns}
        # "kind": the trainer prompts a completion raw, as /v1/completions served it
        return {"id": self.id, "kind": "completion", "prompt": self.prompt or "",
                "response": self.target}


def new_interaction_id() -> str:
    return "int-" + uuid.uuid4().hex


def is_heldout(interaction_id: str, fraction: float) -> bool:
    """Stable split by id: the same id always lands on the same side, on every device."""
    bucket = int.from_bytes(hashlib.sha256(interaction_id.encode()).digest()[:4], "big")
    return bucket / 2**32 < fraction


def to_row(item: Interaction) -> dict[str, Any]:
    """An interaction → its ``interactions`` columns (``change_seq`` is set by the writer)."""
    messages = json.dumps(list(item.messages)) if item.messages is not None else None
    size = sum(len(s.encode()) for s in (messages, item.prompt, item.response, item.correction)
               if s)
    return {
        "id": item.id, "created_at": item.created_at, "kind": item.kind, "messages": messages,
        "prompt": item.prompt, "response": item.response,
        "adapter_version": item.adapter_version, "latency_ms": item.latency_ms,
        "prompt_tokens": item.prompt_tokens, "completion_tokens": item.completion_tokens,
        "feedback": FEEDBACK_VALUE[item.feedback],
        "correction": item.correction, "source": item.source, "size_bytes": size + 64,
        "input_sha": item.input_sha(),
    }


def decode_row(row: dict[str, Any]) -> dict[str, Any]:
    """A raw table row, in place: ``messages`` decoded, ``feedback`` as "up" / "down" / None."""
    row["messages"] = json.loads(row["messages"]) if row["messages"] else None
    row["feedback"] = {1: "up", -1: "down"}.get(row["feedback"])
    return row


def interaction_from_json(raw: Any, *, where: str = "row") -> Interaction:
    """One JSONL row of the trainer's format → :class:`Interaction` (source 'import')."""
    if not isinstance(raw, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    messages, prompt = raw.get("messages"), raw.get("prompt")
    response = raw.get("response")
    last = messages[-1] if isinstance(messages, list) and messages else None
    if response is None and isinstance(last, dict) and last.get("role") == "assistant":
        # a chat transcript whose last turn is the assistant's answer (the trainer's form)
        response, messages = last.get("content"), list(messages or [])[:-1]
    if not isinstance(response, str):
        raise DataError(f"{where}: needs a string 'response' (or messages ending with an "
                        "assistant turn)")
    if messages is None and not isinstance(prompt, str):
        raise DataError(f"{where}: needs 'prompt' (string) or 'messages' (list of role/content)")
    if messages is not None and not (isinstance(messages, list) and all(
            isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages)):
        raise DataError(f"{where}: 'messages' must be a list of {{role, content}} objects")
    feedback = raw.get("feedback")
    if feedback not in (None, "up", "down"):
        raise DataError(f"{where}: 'feedback' must be 'up', 'down' or absent, got {feedback!r}")
    kw: dict[str, Any] = {}
    if isinstance(raw.get("id"), str):
        kw["id"] = raw["id"]
    # created_at is the time the row entered this store (not the file's): retention counts
    # from the import, so importing an old history does not evict it at once
    return Interaction(
        response=response, kind="chat" if messages is not None else "completion",
        messages=messages, prompt=prompt if messages is None else None, feedback=feedback,
        correction=raw.get("correction"), source="import",
        adapter_version=raw.get("adapter_version"), **kw,
    )


def row_to_json(row: dict[str, Any]) -> dict[str, Any]:
    """A stored row → the trainer's JSONL format (what ``data export`` writes).

    Chats are written as the whole conversation ending with the assistant's reply (the form
    agent/training/data.py reads); completions as ``prompt`` + ``response``.
    """
    out: dict[str, Any] = {"id": row["id"], "created_at": row["created_at"]}
    if row["messages"] is not None:
        out["messages"] = [*row["messages"], {"role": "assistant", "content": row["response"]}]
    else:
        out["kind"] = "completion"  # prompted raw, not as a user turn (agent/training/data.py)
        out["prompt"] = row["prompt"] or ""
        out["response"] = row["response"]
    for key in ("feedback", "correction", "adapter_version"):
        if row.get(key) is not None:
            out[key] = row[key]
    return out
