"""The interaction store: every served request, its feedback and corrections, in SQLite.

Nothing in here ever leaves the device. Other components may read *counts* (:meth:`counts`)
and the trainer reads examples (:meth:`examples_since`); content is never reported elsewhere.

Durability and SD-card wear (shared/DESIGN.md §5): the database runs in WAL mode with
``synchronous=NORMAL`` plus an explicit checkpoint-free design; writes go through ONE writer
thread that commits a batch every ``flush_interval_s`` (one fsync per batch instead of one per
request). :meth:`record` never blocks the caller; it returns a :class:`Ticket` whose ``wait``
returns once the row is committed, so a caller that waits before answering knows that an
interaction the user has seen survives ``kill -9``.

Schema versions are tracked with ``PRAGMA user_version``; :data:`MIGRATIONS` upgrades a file
written by an older version in place. Pure stdlib + pydantic (no torch): the daemon imports it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.errors import DataError

log = logging.getLogger(__name__)

DB_NAME = "interactions.sqlite3"
Rating = Literal["up", "down"]
Split = Literal["train", "heldout", "all"]


class StoreConfig(BaseModel):
    """[store] section: capture switch, caps and retention of the interaction store."""

    model_config = ConfigDict(extra="forbid")

    capture: bool = Field(default=True, description="record interactions at all")
    max_record_bytes: int = Field(
        default=256 * 1024, ge=256, description="larger interactions are not stored (counted)"
    )
    max_total_bytes: int = Field(
        default=256 * 1024 * 1024, ge=4096, description="oldest rows are evicted above this"
    )
    retention_days: float = Field(default=90.0, gt=0, description="rows older than this go")
    flush_interval_s: float = Field(
        default=0.02, gt=0, le=5, description="writer commits a batch at least this often"
    )
    max_pending: int = Field(
        default=10_000, ge=1, description="queued writes above this are dropped, never blocking"
    )
    heldout_fraction: float = Field(
        default=0.1, ge=0, lt=1, description="share of examples kept out of training, by id"
    )


# --- schema -------------------------------------------------------------------------------

_SCHEMA_V1 = """
CREATE TABLE interactions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    kind TEXT NOT NULL,
    messages TEXT,
    prompt TEXT,
    response TEXT NOT NULL,
    adapter_version TEXT,
    latency_ms REAL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    feedback INTEGER,
    correction TEXT,
    feedback_at REAL,
    source TEXT NOT NULL DEFAULT 'served',
    size_bytes INTEGER NOT NULL
);
CREATE INDEX interactions_created ON interactions(created_at);
"""

# v2: a change sequence so that feedback given after the trainer read a row makes the row new
# again for ``examples_since``; and an input hash for de-duplication.
_SCHEMA_V2 = """
ALTER TABLE interactions ADD COLUMN change_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE interactions ADD COLUMN input_sha TEXT;
UPDATE interactions SET change_seq = seq;
CREATE INDEX interactions_change ON interactions(change_seq);
CREATE INDEX interactions_input ON interactions(input_sha);
"""

MIGRATIONS: tuple[str, ...] = (_SCHEMA_V1, _SCHEMA_V2)
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to :data:`SCHEMA_VERSION`; returns the version found before."""
    found = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if found > SCHEMA_VERSION:
        raise DataError(
            f"the interaction store has schema {found}, newer than this agent's "
            f"{SCHEMA_VERSION}; upgrade mobizo-agent or purge the store"
        )
    for version in range(found, SCHEMA_VERSION):
        # each migration is one transaction together with its version bump
        conn.executescript(
            "BEGIN;" + MIGRATIONS[version] + f"PRAGMA user_version = {version + 1};COMMIT;"
        )
    return found


# --- records ------------------------------------------------------------------------------

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
        return {"id": self.id, "prompt": self.prompt or "", "response": self.target}


def new_interaction_id() -> str:
    return "int-" + uuid.uuid4().hex


def is_heldout(interaction_id: str, fraction: float) -> bool:
    """Stable split by id: the same id always lands on the same side, on every device."""
    bucket = int.from_bytes(hashlib.sha256(interaction_id.encode()).digest()[:4], "big")
    return bucket / 2**32 < fraction


class Ticket:
    """Handle for a queued write; :meth:`wait` returns True once it is committed."""

    def __init__(self, accepted: bool = True) -> None:
        self._event = threading.Event()
        self.accepted = accepted
        if not accepted:
            self._event.set()

    def _done(self) -> None:
        self._event.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout) and self.accepted


_Op = tuple[str, Any, Ticket]


class InteractionStore:
    """SQLite interaction store with a batching writer thread.

    Args:
        path: the database file (``state_dir/interactions.sqlite3``).
        config: caps, retention and flush interval.
        clock: seconds since the epoch; injected so tests can age rows.
    """

    def __init__(
        self,
        path: Path,
        config: StoreConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.config = config or StoreConfig()
        self._clock = clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._read = self._connect()
        migrate(self._read)
        self._read_lock = threading.Lock()
        self._queue: queue.Queue[_Op | None] = queue.Queue()
        self._pending_ids: set[str] = set()
        self._pending_lock = threading.Lock()
        self.dropped_oversize = 0
        self.dropped_full_queue = 0
        self.evicted = 0
        self._closed = False
        self._writer = threading.Thread(target=self._write_loop, name="store-writer", daemon=True)
        self._writer.start()

    @classmethod
    def in_state_dir(cls, state_dir: Path, config: StoreConfig | None = None) -> InteractionStore:
        return cls(Path(state_dir) / DB_NAME, config)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30,
                               isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a commit survives a process kill (it is in the WAL file); only
        # an OS crash can lose the last batch. FULL would fsync every batch on the SD card.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    # --- writes (non-blocking) ------------------------------------------------------------

    def record(self, interaction: Interaction) -> Ticket:
        """Queue one interaction; never blocks. Dropped (ticket not accepted) if over caps."""
        if not self.config.capture or self._closed:
            return Ticket(accepted=False)
        row = _row(interaction)
        if row["size_bytes"] > self.config.max_record_bytes:
            self.dropped_oversize += 1
            log.warning("interaction %s not stored: %d bytes > max_record_bytes %d",
                        interaction.id, row["size_bytes"], self.config.max_record_bytes)
            return Ticket(accepted=False)
        return self._enqueue("insert", row, interaction.id)

    def set_feedback(self, interaction_id: str, rating: Rating | None,
                     correction: str | None = None) -> Ticket:
        """Queue feedback for a known id; raises KeyError if the id is unknown."""
        if not self.exists(interaction_id):
            raise KeyError(interaction_id)
        value = {"up": 1, "down": -1, None: None}[rating]
        return self._enqueue("feedback", (interaction_id, value, correction), None)

    def _enqueue(self, kind: str, payload: Any, pending_id: str | None) -> Ticket:
        if self._queue.qsize() >= self.config.max_pending:
            self.dropped_full_queue += 1
            return Ticket(accepted=False)
        ticket = Ticket()
        if pending_id is not None:
            with self._pending_lock:
                self._pending_ids.add(pending_id)
        self._queue.put((kind, payload, ticket))
        return ticket

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is committed."""
        ticket = Ticket()
        self._queue.put(("noop", None, ticket))
        return ticket.wait(timeout)

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._writer.join(timeout=30)
        self._read.close()

    def __enter__(self) -> InteractionStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write_loop(self) -> None:
        conn = self._connect()
        total = self._total_bytes(conn)
        last_retention = 0.0
        stop = False
        while not stop:
            first = self._queue.get()
            batch: list[_Op] = []
            if first is None:
                stop = True
            else:
                batch.append(first)
                deadline = time.monotonic() + self.config.flush_interval_s
                while True:
                    left = deadline - time.monotonic()
                    try:
                        op = self._queue.get(timeout=max(left, 0)) if left > 0 else \
                            self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if op is None:
                        stop = True
                        break
                    batch.append(op)
            if not batch:
                continue
            try:
                total = self._commit(conn, batch, total)
                now = self._clock()
                if now - last_retention > 60:
                    total -= self._apply_retention(conn, now)
                    last_retention = now
            except sqlite3.Error:
                log.exception("interaction store write failed; %d writes lost", len(batch))
            finally:
                for _, _, ticket in batch:
                    ticket._done()
                with self._pending_lock:
                    for kind, payload, _ in batch:
                        if kind == "insert":
                            self._pending_ids.discard(payload["id"])
        conn.close()

    def _commit(self, conn: sqlite3.Connection, batch: list[_Op], total: int) -> int:
        conn.execute("BEGIN IMMEDIATE")
        try:
            seq = conn.execute("SELECT COALESCE(MAX(change_seq), 0) FROM interactions")
            change_seq = int(seq.fetchone()[0])
            for kind, payload, _ in batch:
                if kind == "insert":
                    change_seq += 1
                    cols = {**payload, "change_seq": change_seq}
                    conn.execute(
                        f"INSERT OR IGNORE INTO interactions ({','.join(cols)}) "
                        f"VALUES ({','.join('?' * len(cols))})", tuple(cols.values()))
                    total += payload["size_bytes"]
                elif kind == "feedback":
                    change_seq += 1
                    iid, value, correction = payload
                    conn.execute(
                        "UPDATE interactions SET feedback = ?, "
                        "correction = COALESCE(?, correction), feedback_at = ?, change_seq = ? "
                        "WHERE id = ?",
                        (value, correction, self._clock(), change_seq, iid))
            if total > self.config.max_total_bytes:
                total -= self._evict(conn, total - self.config.max_total_bytes)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return total

    def _evict(self, conn: sqlite3.Connection, excess: int) -> int:
        """Delete the oldest rows until ``excess`` bytes are gone; returns bytes freed."""
        freed, cutoff, count = 0, None, 0
        for seq, size in conn.execute("SELECT seq, size_bytes FROM interactions ORDER BY seq"):
            freed += size
            cutoff = seq
            count += 1
            if freed >= excess:
                break
        if cutoff is not None:
            conn.execute("DELETE FROM interactions WHERE seq <= ?", (cutoff,))
            self.evicted += count
            log.info("store over max_total_bytes: evicted %d oldest interactions", count)
        return freed

    def _apply_retention(self, conn: sqlite3.Connection, now: float) -> int:
        cutoff = now - self.config.retention_days * 86400
        return self._delete_before(conn, cutoff)

    @staticmethod
    def _delete_before(conn: sqlite3.Connection, cutoff: float) -> int:
        row = conn.execute("SELECT COALESCE(SUM(size_bytes), 0) FROM interactions "
                           "WHERE created_at < ?", (cutoff,)).fetchone()
        conn.execute("DELETE FROM interactions WHERE created_at < ?", (cutoff,))
        return int(row[0])

    @staticmethod
    def _total_bytes(conn: sqlite3.Connection) -> int:
        return int(conn.execute(
            "SELECT COALESCE(SUM(size_bytes), 0) FROM interactions").fetchone()[0])

    # --- reads ----------------------------------------------------------------------------

    def _query(self, sql: str, args: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self._read_lock:
            return self._read.execute(sql, tuple(args)).fetchall()

    def exists(self, interaction_id: str) -> bool:
        with self._pending_lock:
            if interaction_id in self._pending_ids:
                return True
        return bool(self._query("SELECT 1 FROM interactions WHERE id = ?", (interaction_id,)))

    def get(self, interaction_id: str) -> dict[str, Any] | None:
        """One row as a dict (``messages`` decoded), or None."""
        rows = self._rows("WHERE id = ?", (interaction_id,))
        return rows[0] if rows else None

    def _rows(self, where: str = "", args: Iterable[Any] = ()) -> list[dict[str, Any]]:
        with self._read_lock:
            cur = self._read.execute(f"SELECT * FROM interactions {where}", tuple(args))
            names = [d[0] for d in cur.description]
            out = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
        for row in out:
            row["messages"] = json.loads(row["messages"]) if row["messages"] else None
            row["feedback"] = {1: "up", -1: "down"}.get(row["feedback"])
        return out

    def iter_rows(self, batch: int = 500) -> Iterable[dict[str, Any]]:
        """Every row, oldest first (for ``data export``)."""
        last = 0
        while True:
            rows = self._rows("WHERE seq > ? ORDER BY seq LIMIT ?", (last, batch))
            if not rows:
                return
            yield from rows
            last = rows[-1]["seq"]

    def examples_since(
        self, cursor: int = 0, *, split: Split = "train", limit: int = 10_000
    ) -> tuple[list[Example], int]:
        """Training examples changed after ``cursor``, and the cursor to pass next time.

        Targets: a correction when there is one; otherwise the served response if it was
        rated up, or an imported response that was not rated down. Unrated served responses
        are the model's own output and teach it nothing, so they are skipped. Within one call
        examples with the same input keep only the newest (de-duplication).
        """
        top = int(self._query("SELECT COALESCE(MAX(change_seq), 0) FROM interactions")[0][0])
        rows = self._rows(
            "WHERE change_seq > ? AND change_seq <= ? AND (correction IS NOT NULL OR "
            "feedback = 1 OR (source = 'import' AND (feedback IS NULL OR feedback = 1))) "
            "ORDER BY change_seq LIMIT ?", (cursor, top, limit))
        # a full page resumes after its last row; otherwise everything up to ``top`` was seen
        new_cursor = rows[-1]["change_seq"] if len(rows) == limit else max(cursor, top)
        by_input: dict[str, Example] = {}
        for r in rows:
            if split != "all" and is_heldout(r["id"], self.config.heldout_fraction) != (
                split == "heldout"
            ):
                continue
            target = r["correction"] if r["correction"] is not None else r["response"]
            by_input[r["input_sha"] or r["id"]] = Example(
                r["id"], target, r["messages"], r["prompt"], r["change_seq"])
        return sorted(by_input.values(), key=lambda e: e.change_seq), new_cursor

    def counts(self) -> dict[str, Any]:
        """Counts only, never content: safe to report to the daemon and the fleet."""
        row = self._query(
            "SELECT COUNT(*), COALESCE(SUM(feedback = 1), 0), COALESCE(SUM(feedback = -1), 0),"
            " COALESCE(SUM(correction IS NOT NULL), 0), COALESCE(SUM(size_bytes), 0),"
            " MAX(created_at), COALESCE(MAX(change_seq), 0) FROM interactions")[0]
        return {
            "interactions": int(row[0]), "feedback_up": int(row[1]),
            "feedback_down": int(row[2]), "corrections": int(row[3]), "bytes": int(row[4]),
            "last_activity": row[5], "change_seq": int(row[6]), "pending": self.pending,
            "dropped_oversize": self.dropped_oversize,
            "dropped_full_queue": self.dropped_full_queue, "evicted": self.evicted,
        }

    def last_activity(self) -> float | None:
        return self._query("SELECT MAX(created_at) FROM interactions")[0][0]

    # --- maintenance ----------------------------------------------------------------------

    def purge(self, before: float | None = None) -> int:
        """Delete every row (or those created before ``before``); returns rows deleted."""
        self.flush()
        with self._read_lock:
            where, args = ("WHERE created_at < ?", (before,)) if before is not None else ("", ())
            n = self._read.execute(f"SELECT COUNT(*) FROM interactions {where}", args)
            count = int(n.fetchone()[0])
            self._read.execute(f"DELETE FROM interactions {where}", args)
            # reclaim the space so deleted content is really gone from the file
            self._read.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._read.execute("VACUUM")
        return count

    def import_rows(self, rows: Iterable[dict[str, Any]]) -> tuple[int, int]:
        """Insert trainer-format dicts (prompt/response/feedback/correction/messages).

        Returns (imported, skipped as duplicates). Raises DataError on an unusable row.
        """
        known = {r[0] for r in self._query("SELECT input_sha || response FROM interactions")}
        tickets, imported, skipped = [], 0, 0
        for n, raw in enumerate(rows, 1):
            item = interaction_from_json(raw, where=f"row {n}")
            key = item.input_sha() + item.response
            if key in known:
                skipped += 1
                continue
            known.add(key)
            tickets.append(self.record(item))
            imported += 1
        self.flush(timeout=120)
        return imported, skipped


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
        out["prompt"] = row["prompt"] or ""
        out["response"] = row["response"]
    for key in ("feedback", "correction", "adapter_version"):
        if row.get(key) is not None:
            out[key] = row[key]
    return out


def _row(item: Interaction) -> dict[str, Any]:
    messages = json.dumps(list(item.messages)) if item.messages is not None else None
    size = sum(len(s.encode()) for s in (messages, item.prompt, item.response, item.correction)
               if s)
    return {
        "id": item.id, "created_at": item.created_at, "kind": item.kind, "messages": messages,
        "prompt": item.prompt, "response": item.response,
        "adapter_version": item.adapter_version, "latency_ms": item.latency_ms,
        "prompt_tokens": item.prompt_tokens, "completion_tokens": item.completion_tokens,
        "feedback": {"up": 1, "down": -1, None: None}[item.feedback],
        "correction": item.correction, "source": item.source, "size_bytes": size + 64,
        "input_sha": item.input_sha(),
    }
