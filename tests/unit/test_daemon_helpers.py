"""Small pieces of the daemon: exit reasons, metrics tailing, --ignore parsing, the control
socket's table-driven requests and the debug hooks."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from pydantic import BaseModel

from agent.core.command_wire import NoArgs
from agent.io.children.process import MetricsTail, describe_exit
from agent.io.control_socket import ControlServer, control_request
from agent.services.daemon.commands import Command, DaemonCommand, PauseRequest
from agent.services.daemon.control import (
    SOCKET_NAME,
    ControlCommands,
    control_server,
    parse_ignore,
)
from agent.services.daemon.debug_hooks import DebugHooks, HangArgs, PublishDelayArgs
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
    progress = BurstProgress(lambda: now[0], lambda: now[0])  # wall clock, monotonic
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


class _Loop:
    """Runs a table command at once (the main loop, in miniature)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict]] = []

    def submit(self, name: str, command: DaemonCommand, args: BaseModel,
               timeout: float = 0) -> Command:
        self.seen.append((name, args.model_dump()))
        cmd = Command(name, lambda: command.handler(args))
        cmd.result = cmd.run()
        return cmd


def _table() -> dict[str, DaemonCommand]:
    return {"status": DaemonCommand(NoArgs, lambda args: {"state": "waiting"}),
            "pause": DaemonCommand(PauseRequest, lambda args: {"message": args.reason})}


def test_control_lines_malformed_requests_get_an_error_reply(tmp_path: Path) -> None:
    loop = _Loop()
    server = ControlServer(ControlCommands(_table(), loop).handle, tmp_path / "c.sock")
    ok = server.handle_line(b'{"cmd": "status"}')
    assert ok.ok and ok.result == {"state": "waiting"}
    for bad in (b"{not json", b'{"cmd": "format-disk"}', b'{"cmd": "status", "x": 1}',
                b'{"cmd": "pause", "args": {"reason": 3}}',
                b'{"cmd": "debug-hang", "args": {"seconds": 1}}'):  # no --debug-hooks
        reply = server.handle_line(bad)
        assert not reply.ok and reply.error and reply.error.startswith("bad request")
    assert loop.seen == [("status", {})]
    paused = server.handle_line(b'{"cmd": "pause"}')
    assert paused.ok and paused.result == {"message": "paused by the user"}


def test_control_socket_round_trip_over_a_long_path(tmp_path: Path) -> None:
    """A state directory deeper than sun_path allows still serves (the /proc/self/fd trick)."""
    deep = tmp_path.joinpath(*["d" * 20] * 6)
    server = control_server(_table(), _Loop(), deep, timeout_s=5.0)
    server.start()
    try:
        reply = control_request(deep / SOCKET_NAME, "pause", {"reason": "why"}, timeout=5.0)
        assert reply.ok and reply.result == {"message": "why"}
    finally:
        server.stop()
    assert not (deep / SOCKET_NAME).exists()


def test_debug_hooks_are_their_own_table() -> None:
    slept: list[float] = []
    hooks = DebugHooks(sleep=slept.append)
    assert set(hooks.table()) == {"debug-hang", "debug-publish-delay"}
    hooks.hang(HangArgs(seconds=2.0))
    hooks.after_commands()
    hooks.after_commands()  # once only
    hooks.delay_publish(PublishDelayArgs(stage="staged", seconds=3))
    hooks.stage_hook("copied")
    hooks.stage_hook("staged")
    assert slept == [2.0, 3.0]


def test_daemon_timings_are_settings_with_the_old_defaults() -> None:
    from pydantic import ValidationError

    from agent.config import AgentConfig
    from agent.config.daemon import DaemonConfig

    d = AgentConfig().daemon
    assert (d.stop_grace_s, d.eval_timeout_s, d.publish_verify_s, d.failure_backoff_s,
            d.failure_backoff_max_s) == (30.0, 900.0, 10.0, 30.0, 900.0)
    assert all(f.description for f in DaemonConfig.model_fields.values())
    with pytest.raises(ValidationError):
        DaemonConfig(stop_grace_s=0.0)
