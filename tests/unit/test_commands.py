"""Command parsing and dispatch (pure): typed requests, or error results, never exceptions."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from agent.core.commands import (
    COMMANDS,
    Ack,
    CommandFailed,
    CommandRejected,
    ParsedCommand,
    ParseError,
    PurgeDataOutput,
    RollbackOutput,
    TrainNowOutput,
    error_of,
    parse_command,
    run_short,
)
from agent.core.fleet_documents import StateDocument

NOW = 1_800_000_000.0


def parse(name: str, body: object, limit: int = 65536):
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_command(name, payload, now=NOW, max_payload_bytes=limit)


class Recorder:
    """A CommandHandler that records calls (the daemon's side, in miniature)."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.calls: list[tuple] = []
        self.fail = fail

    def _call(self, *entry):
        self.calls.append(entry)
        if self.fail:
            raise self.fail

    def train_now(self, args, job):
        self._call("train_now", args.max_steps)
        return TrainNowOutput(outcome="completed", steps=args.max_steps or 0)

    def pause(self, reason):
        self._call("pause", reason)
        return Ack(message="paused")

    def resume(self):
        self._call("resume")
        return Ack(message="resumed")

    def rollback(self, version, job):
        self._call("rollback", version)
        return RollbackOutput(active_version=version)

    def status(self):
        self._call("status")
        return StateDocument(state="idle")

    def purge_data(self, before, job):
        self._call("purge_data", before)
        return PurgeDataOutput(deleted=3)

    def set_log_level(self, level):
        self._call("set_log_level", level)
        return Ack()


def test_command_table():
    assert set(COMMANDS) == {
        "train-now",
        "pause",
        "resume",
        "rollback",
        "status",
        "purge-data",
        "set-log-level",
        "cancel",
        "ack-jobs",
        "push-adapter",
        "push-bundle",
        "artifact-chunk",
        "artifact-status",
    }
    assert {n for n, s in COMMANDS.items() if s.long} == {
        "train-now", "rollback", "purge-data", "push-adapter", "push-bundle"}
    # job bookkeeping is the link's, never the daemon's
    assert {n for n, s in COMMANDS.items() if s.by_link} == {"cancel", "ack-jobs"}


def test_empty_payload_is_a_valid_request():
    parsed = parse_command("status", b"", now=NOW, max_payload_bytes=100)
    assert isinstance(parsed, ParsedCommand) and parsed.request.request_id is None


def test_typed_args():
    parsed = parse("purge-data", {"request_id": "r1", "args": {"before": "2030-01-02T03:04:05Z"}})
    assert isinstance(parsed, ParsedCommand)
    assert parsed.args.before == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    parsed = parse("set-log-level", {"args": {"level": "debug"}})
    assert parsed.args.level == "DEBUG"
    parsed = parse("rollback", {"args": {}})
    assert parsed.args.version is None


@pytest.mark.parametrize(
    ("name", "body", "code", "rid"),
    [
        ("status", b"{oops", "bad_request", None),
        ("status", b"\xff\xfe", "bad_request", None),
        ("status", [1], "bad_request", None),
        ("status", {"request_id": "r/1"}, "bad_request", None),
        ("status", {"request_id": "r2", "reply_to": "a/#"}, "bad_request", "r2"),
        ("status", {"request_id": "r3", "extra": True}, "bad_request", "r3"),
        ("pause", {"request_id": "r4", "args": {"reason": 1}}, "bad_request", "r4"),
        ("train-now", {"args": {"max_steps": 0}}, "bad_request", None),
        ("train-now", {"args": {"max_steps": "10", "turbo": True}}, "bad_request", None),
        ("nope", {"request_id": "r5"}, "unknown_command", "r5"),
        ("status", {"request_id": "r6", "expires_at": NOW - 1}, "expired", "r6"),
        ("status", {"expires_at": "2020-01-01T00:00:00"}, "expired", None),
        ("status", b" " * 70000, "payload_too_large", None),
    ],
)
def test_bad_requests_become_error_results(name, body, code, rid):
    err = parse(name, body)
    assert isinstance(err, ParseError)
    assert err.code == code and err.request_id == rid
    assert err.message  # says what was wrong


def test_not_yet_expired_runs():
    assert isinstance(parse("status", {"expires_at": NOW + 5}), ParsedCommand)


def test_run_short_and_handler_errors():
    rec = Recorder()
    result = run_short(
        rec,
        parse("pause", {"request_id": "a", "args": {"reason": "x"}}),
        device_id="d",
        clock=lambda: NOW,
    )
    assert result.ok and result.result == {"message": "paused"} and result.request_id == "a"
    assert rec.calls == [("pause", "x")]
    for exc, code in (
        (CommandRejected("busy"), "rejected"),
        (CommandFailed("disk"), "failed"),
        (RuntimeError("bug"), "internal"),
    ):
        result = run_short(
            Recorder(fail=exc), parse("status", {}), device_id="d", clock=lambda: NOW
        )
        assert not result.ok and result.error.code == code and error_of(exc).code == code


def test_every_command_reaches_its_handler():
    from agent.core.commands import NO_JOB, execute

    rec = Recorder()
    for name, args in [
        ("train-now", {"max_steps": 2}),
        ("pause", {}),
        ("resume", {}),
        ("rollback", {"version": 3}),
        ("status", {}),
        ("purge-data", {}),
        ("set-log-level", {"level": "ERROR"}),
    ]:
        parsed = parse(name, {"args": args})
        assert isinstance(parsed, ParsedCommand), parsed
        execute(rec, parsed, NO_JOB)
    assert [c[0] for c in rec.calls] == [
        "train_now",
        "pause",
        "resume",
        "rollback",
        "status",
        "purge_data",
        "set_log_level",
    ]
