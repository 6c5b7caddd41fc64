"""The SQLite interaction store, against a real database file."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from agent.errors import DataError
from agent.io.store import InteractionStore, StoreConfig
from agent.io.store_records import Interaction, is_heldout, row_to_json
from agent.io.store_schema import SCHEMA_VERSION


def _store(tmp_path: Path, **cfg: object) -> InteractionStore:
    return InteractionStore(tmp_path / "s.sqlite3", StoreConfig(**cfg))  # type: ignore[arg-type]


def test_round_trip_and_wal(tmp_path: Path) -> None:
    with _store(tmp_path) as store:
        item = Interaction(response="hi there", messages=[{"role": "user", "content": "hi"}],
                           adapter_version="v0001", latency_ms=12.5, completion_tokens=2)
        assert store.record(item).wait(5)
        row = store.get(item.id)
        assert row is not None
        assert row["response"] == "hi there"
        assert row["messages"] == [{"role": "user", "content": "hi"}]
        assert row["adapter_version"] == "v0001" and row["latency_ms"] == 12.5
    conn = sqlite3.connect(tmp_path / "s.sqlite3")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_migrates_a_v1_file(tmp_path: Path) -> None:
    from agent.io.store_schema import MIGRATIONS

    conn = sqlite3.connect(tmp_path / "s.sqlite3")
    conn.executescript(MIGRATIONS[0] + "PRAGMA user_version = 1;")
    conn.execute("INSERT INTO interactions (id, created_at, kind, prompt, response, size_bytes,"
                 " feedback) VALUES ('old', 1.0, 'completion', 'p', 'r', 10, 1)")
    conn.commit()
    conn.close()
    with _store(tmp_path, retention_days=1e6) as store:
        examples, _ = store.examples_since(0, split="all")
        assert [e.id for e in examples] == ["old"]


def test_feedback_makes_examples_and_moves_cursor(tmp_path: Path) -> None:
    with _store(tmp_path, heldout_fraction=0.0) as store:
        a = Interaction(response="ans a", prompt="q a", kind="completion")
        b = Interaction(response="ans b", prompt="q b", kind="completion")
        store.record(a)
        store.record(b)
        store.flush()
        examples, cursor = store.examples_since(0)
        assert examples == []  # unrated model output is not a target
        store.set_feedback(a.id, "up").wait(5)
        store.set_feedback(b.id, "down", correction="better b").wait(5)
        examples, cursor2 = store.examples_since(cursor)
        assert {(e.id, e.target) for e in examples} == {(a.id, "ans a"), (b.id, "better b")}
        assert store.examples_since(cursor2)[0] == []
        with pytest.raises(KeyError):
            store.set_feedback("int-unknown", "up")
        counts = store.counts()
        assert counts["interactions"] == 2 and counts["feedback_up"] == 1
        assert counts["corrections"] == 1


def test_heldout_split_is_stable_and_disjoint(tmp_path: Path) -> None:
    with _store(tmp_path, heldout_fraction=0.3) as store:
        items = [Interaction(response=f"r{i}", prompt=f"p{i}", kind="completion", feedback="up")
                 for i in range(200)]
        for it in items:
            store.record(it)
        store.flush()
        train, _ = store.examples_since(0, split="train")
        held, _ = store.examples_since(0, split="heldout")
        assert {e.id for e in train}.isdisjoint({e.id for e in held})
        assert len(train) + len(held) == 200
        assert 30 < len(held) < 90
        assert all(is_heldout(e.id, 0.3) for e in held)


def test_dedup_keeps_newest(tmp_path: Path) -> None:
    with _store(tmp_path, heldout_fraction=0.0) as store:
        for r in ("first", "second"):
            store.record(Interaction(response=r, prompt="same", kind="completion", feedback="up"))
        store.flush()
        examples, _ = store.examples_since(0)
        assert [e.target for e in examples] == ["second"]


def test_caps_evict_oldest_and_drop_oversize(tmp_path: Path) -> None:
    with _store(tmp_path, max_total_bytes=4096, max_record_bytes=1000) as store:
        ids = []
        for i in range(40):
            it = Interaction(response="x" * 300, prompt=f"p{i}", kind="completion")
            ids.append(it.id)
            store.record(it)
        assert not store.record(Interaction(response="y" * 2000, prompt="big")).wait(1)
        store.flush()
        counts = store.counts()
        assert counts["bytes"] <= 4096
        assert store.get(ids[-1]) is not None and store.get(ids[0]) is None
        assert counts["evicted"] > 0 and counts["dropped_oversize"] == 1


def test_retention_and_purge(tmp_path: Path) -> None:
    now = [1_800_000_000.0]  # a synced clock: retention waits for one
    store = InteractionStore(tmp_path / "s.sqlite3", StoreConfig(retention_days=1),
                             clock=lambda: now[0])
    old = Interaction(response="old", prompt="p", created_at=now[0] - 2 * 86400)
    new = Interaction(response="new", prompt="q", created_at=now[0])
    store.record(old)
    store.record(new)
    store.flush()
    store.flush()  # retention runs after a batch's tickets: the second flush waits for it
    assert store.get(old.id) is None and store.get(new.id) is not None
    assert store.purge() == 1
    assert store.counts()["interactions"] == 0
    store.close()


def test_capture_off_records_nothing(tmp_path: Path) -> None:
    with _store(tmp_path, capture=False) as store:
        assert not store.record(Interaction(response="r", prompt="p")).wait(1)
        assert store.counts()["interactions"] == 0


def test_import_export_round_trip(tmp_path: Path) -> None:
    rows: list[dict[str, Any]] = [
        {"prompt": "2+2?", "response": "4", "feedback": "up"},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
        {"prompt": "2+2?", "response": "4"},  # duplicate
    ]
    with _store(tmp_path) as store:
        assert store.import_rows(rows) == (2, 1)
        out = [row_to_json(r) for r in store.iter_rows()]
        assert out[0]["prompt"] == "2+2?" and out[0]["feedback"] == "up"
        assert out[1]["messages"] == rows[1]["messages"]
        assert store.import_rows(out) == (0, 2)  # what export writes, import reads back
        with pytest.raises(DataError, match="row 1"):
            store.import_rows([{"prompt": 3}])


def test_export_is_the_trainers_format(tmp_path: Path) -> None:
    from agent.training.data import parse_interaction

    with _store(tmp_path, heldout_fraction=0.0) as store:
        chat = Interaction(response="yo", messages=[{"role": "user", "content": "hi"}],
                           feedback="up")
        comp = Interaction(response="4", prompt="2+2?", kind="completion", correction="four")
        store.record(chat)
        store.record(comp)
        store.flush()
        rows = [row_to_json(r) for r in store.iter_rows()]
        parsed = [parse_interaction(r, n) for n, r in enumerate(rows, 1)]
        assert [p.target for p in parsed if p] == ["yo", "four"]
        examples, _ = store.examples_since(0)
        parsed = [parse_interaction(e.to_json(), 1) for e in examples]
        assert [p.target for p in parsed if p] == ["yo", "four"]


def test_committed_rows_survive_kill_9(tmp_path: Path) -> None:
    db = tmp_path / "s.sqlite3"
    script = textwrap.dedent(f"""
        import sys, time
        from agent.io.store import InteractionStore
        from agent.io.store_records import Interaction
        store = InteractionStore({str(db)!r})
        i = 0
        while True:
            it = Interaction(response="r" * 100, prompt=f"p{{i}}")
            if store.record(it).wait(5):
                print(it.id, flush=True)
            i += 1
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    committed = [proc.stdout.readline().strip() for _ in range(30)]
    proc.kill()
    proc.wait()
    conn = sqlite3.connect(db)
    stored = {r[0] for r in conn.execute("SELECT id FROM interactions")}
    assert set(committed) <= stored


def test_data_cli_import_export_purge(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                      ) -> None:
    import json

    from agent.cli import main

    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "a", "response": "b", "feedback": "up", "created_at": 1000.0},
        {"messages": [{"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]},
    ]) + "\n")
    state = ["data", "--state-dir", str(tmp_path / "state")]
    assert main([*state, "import", str(src)]) == 0
    assert "imported 2" in capsys.readouterr().out
    out = tmp_path / "out.jsonl"
    assert main([*state, "export", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["prompt"] == "a" and rows[1]["messages"][-1]["content"] == "d"
    assert main([*state, "stats"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["interactions"] == 2 and "response" not in json.dumps(stats)
    assert main([*state, "purge", "--before", "2000-01-02", "--yes"]) == 0
    assert "purged 0" in capsys.readouterr().out
    assert main([*state, "purge", "--yes"]) == 0
    assert "purged 2" in capsys.readouterr().out
    assert main([*state, "import", str(tmp_path / "missing.jsonl")]) == 2
