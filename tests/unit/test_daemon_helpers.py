"""Small pure pieces of the daemon: exit reasons, metrics tailing, --ignore parsing."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from agent.io.children.process import MetricsTail, describe_exit
from agent.services.daemon.control import ControlServer, parse_ignore
from agent.services.daemon.progress import BurstProgress


def test_exit_reasons() -> None:
    assert describe_exit(0) == "finished"
    assert "resumable" in describe_exit(75)
    assert "refused its input" in describe_exit(2)
    assert "OOM killer or kill -9" in describe_exit(-signal.SIGKILL)
    assert "SIGSEGV" in describe_exit(-signal.SIGSEGV)
    assert "SIGKILL" in describe_exit(137)
    assert describe_exit(1) == "crashed (exit 1)"


def test_metrics_tail_reads_only_complete_new_lines(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    tail = MetricsTail(path)
    assert tail.read() == []  # no file yet
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')
    assert tail.read() == [{"step": 1, "loss": 2.0}]
    with path.open("a") as fh:
        fh.write('ss": 1.5}\nnot json\n[1]\n')
    assert tail.read() == [{"step": 2, "loss": 1.5}]
    assert tail.read() == []


def test_burst_progress_reads_only_the_new_burst_and_records_it(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 3, "loss": 9.0}\n')  # an earlier burst's line
    now = [100.0]
    progress = BurstProgress(lambda: now[0])
    progress.watch(path)
    progress.begin(start_step=3)
    with path.open("a") as fh:
        fh.write('{"step": 4, "loss": 2.0}\n{"step": 5, "loss": NaN}\n{"note": 1}\n'
                 '{"step": 6, "loss": 1.5}\n')
    assert [r["step"] for r in progress.new_rows()] == [4, 5, 6]
    assert progress.losses == [2.0, 1.5] and progress.last_loss == 1.5
    now[0] = 103.0
    record = progress.record("stopped", "asked to stop", steps_done=6)
    assert (record.started_at, record.ended_at, record.steps) == (100.0, 103.0, 3)
    assert (record.train_loss_start, record.train_loss_end, record.steps_per_s) == (2.0, 1.5, 1.0)


def test_parse_ignore() -> None:
    assert parse_ignore("power, idle,hours,min-examples") == [
        "power", "idle", "hours", "min_examples"]
    assert parse_ignore("") == []
    with pytest.raises(ValueError, match="thermal and memory always apply"):
        parse_ignore("power,thermal")


class _Daemon:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict]] = []

    def submit(self, name: str, args: dict, timeout: float = 0) -> object:
        self.seen.append((name, args))

        class Done:
            error = None
            result = {"state": "waiting"}

        return Done()


def test_control_lines_malformed_requests_get_an_error_reply(tmp_path: Path) -> None:
    daemon = _Daemon()
    server = ControlServer(daemon, tmp_path / "c.sock")
    ok = server.handle_line(b'{"cmd": "status"}')
    assert ok.ok and ok.result == {"state": "waiting"}
    for bad in (b"{not json", b'{"cmd": "format-disk"}', b'{"cmd": "status", "x": 1}'):
        reply = server.handle_line(bad)
        assert not reply.ok and reply.error and reply.error.startswith("bad request")
    assert daemon.seen == [("status", {})]
