"""A caller waiting on a write's ticket ends the writer's batch window (real SQLite file).

The writer batches writes for ``flush_interval_s``; the service's answer waits for its row's
commit, so without this every request would wait the window out (20 ms by default: the
"23 ms outside prefill + decode" of the issue 18 benchmark). The window here is 5 s, the
most the config allows: a wait that returns well before it shows the window was cut short.
"""

from __future__ import annotations

import time
from pathlib import Path

from agent.io.store import InteractionStore, StoreConfig
from agent.io.store_records import Interaction


def _item(text: str) -> Interaction:
    return Interaction(response=text, messages=[{"role": "user", "content": "hi"}],
                       adapter_version="v0001", latency_ms=1.0, completion_tokens=1)


def test_a_waited_for_write_is_committed_before_the_window_ends(tmp_path: Path) -> None:
    with InteractionStore(tmp_path / "s.sqlite3", StoreConfig(flush_interval_s=5)) as store:
        items = [_item(f"queued {i}") for i in range(4)]
        tickets = [store.record(item) for item in items]  # nobody waits on the first three
        t0 = time.monotonic()
        assert tickets[-1].wait(4.0), "the commit waited for the whole batch window"
        assert time.monotonic() - t0 < 4.0
        assert all(t.wait(0) for t in tickets)  # what was queued before went in with it
        assert all(store.get(item.id) is not None for item in items)
        t0 = time.monotonic()
        assert store.flush(4.0) and time.monotonic() - t0 < 4.0  # a flush waits the same way


def test_markers_of_committed_writes_are_skipped(tmp_path: Path) -> None:
    with InteractionStore(tmp_path / "s.sqlite3", StoreConfig(flush_interval_s=5)) as store:
        for i in range(5):  # a wait that finds its write committed leaves a marker behind
            ticket = store.record(_item(f"turn {i}"))
            assert ticket.wait(4.0) and ticket.wait(0)
        last = _item("last")
        assert store.record(last).wait(4.0)
        assert store.get(last.id) is not None and store.last_seq() == 6
