"""``mobizo-fleet push-adapter|push-bundle DEVICE|--all DIR``: deliver an artifact in chunks.

::

    mobizo-fleet ... push-adapter dev1 ./v0007 [--bundle-id ID] [--health-window 10]
    mobizo-fleet ... push-bundle --all ./bundle [--chunk-size 45056] [--rate 18]

The controller sends the manifest as a ``push-*`` command (the device makes it a job: it
checks the manifest and its disk, and opens its staging area), asks ``artifact-status`` which
chunks it still needs (after a restart it keeps what it had), then sends those as
``artifact-chunk`` commands: at most ``--window`` unanswered at once and ``--rate`` a second
(the device drops a topic's messages beyond ``mqtt.inbound_rate_per_s``, 20 by default), each
resent when its reply does not come within ``--retry``. Then it follows the job to its end:
committed, or refused / rolled back with the device's reason. Exit 0 when every device
committed, 1 when one did not, 3 when one did not answer.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.controller.client import TERMINAL_JOB_STATES, BrokerOptions, FleetClient, FleetError
from agent.controller.push_manifest import Artifact, build_artifact
from agent.core.artifact import DEFAULT_CHUNK_SIZE, ArtifactKind
from agent.core.commands import CommandResult
from agent.errors import MobizoError

EXIT_OK, EXIT_FAILED, EXIT_NO_ANSWER = 0, 1, 3


@dataclass(frozen=True)
class PushOptions:
    """How a push paces itself and how long it waits."""

    health_window_s: float = 10.0
    transfer_timeout_s: float = 900.0
    window: int = 16
    rate_per_s: float = 18.0
    burst: int = 64
    retry_s: float = 5.0
    answer_timeout_s: float = 30.0
    max_payload_bytes: int = 64 * 1024


@dataclass
class PushResult:
    """One device's push: its job's end and what the transfer cost."""

    device: str
    ok: bool
    status: str
    detail: str = ""
    job: dict[str, Any] | None = None
    chunks_sent: int = 0
    bytes_sent: int = 0
    transfer_s: float = 0.0
    resent: int = 0

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class _Transfer:
    fc: FleetClient
    device: str
    artifact: Artifact
    opts: PushOptions
    job_id: str = field(default_factory=lambda: f"push-{uuid.uuid4().hex[:16]}")
    job: dict[str, Any] | None = None
    answers: dict[str, CommandResult] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.dev = self.fc.topics.device(self.device)
        self.reply_topic = (self.fc.topics.controller_reply(self.fc.client_id) if self.fc.v5
                            else f"{self.dev.prefix}/cmd-result/+")
        self.fc.subscribe(self.reply_topic, self.dev.job(self.job_id))

    def send(self, name: str, args: dict[str, Any], job_id: str | None = None) -> str:
        rid = uuid.uuid4().hex
        body: dict[str, Any] = {"request_id": rid, "args": args}
        if job_id:
            body["job_id"] = job_id
        props = None
        if self.fc.v5:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ResponseTopic = self.reply_topic
            props.CorrelationData = rid.encode()
        self.fc.publish(self.dev.cmd(name), json.dumps(body).encode(), props=props)
        return rid

    def pump(self, seconds: float) -> None:
        """Take in the messages of the next ``seconds`` (replies and job updates)."""
        for msg in self.fc.messages_within(seconds):
            self._absorb(msg)
            seconds = 0.0  # after one message, only drain what is already there
            if self.fc.messages.empty():
                return

    def _absorb(self, msg: paho.MQTTMessage) -> None:
        if msg.topic == self.dev.job(self.job_id):
            if msg.payload:
                self.job = json.loads(msg.payload)
            return
        try:
            result = CommandResult.model_validate_json(msg.payload)
        except ValueError:
            return
        if result.device_id == self.device and result.request_id:
            self.answers[result.request_id] = result

    def ask(self, name: str, args: dict[str, Any], job_id: str | None = None) -> CommandResult:
        rid = self.send(name, args, job_id)
        deadline = time.monotonic() + self.opts.answer_timeout_s
        while rid not in self.answers:
            if time.monotonic() > deadline:
                raise FleetError(f"no answer from {self.device} to {name} within "
                                 f"{self.opts.answer_timeout_s:.0f} s (offline, or busy?)")
            self.pump(0.2)
        return self.answers.pop(rid)

    @property
    def ended(self) -> bool:
        return self.job is not None and self.job.get("status") in TERMINAL_JOB_STATES


def _missing(t: _Transfer) -> list[int] | None:
    """The chunks the device still needs once it receives; None when the job ended first."""
    aid = t.artifact.manifest.artifact_id
    deadline = time.monotonic() + t.opts.answer_timeout_s
    while not t.ended:
        status = t.ask("artifact-status", {"artifact_id": aid})
        if not status.ok:
            raise MobizoError(f"{t.device}: artifact-status failed: {status.error}")
        result = status.result or {}
        if result.get("state") == "receiving":
            return [int(i) for i in result.get("missing", [])]
        if time.monotonic() > deadline:
            raise FleetError(f"{t.device} did not start receiving within "
                             f"{t.opts.answer_timeout_s:.0f} s (its job queue busy?)")
        t.pump(0.3)
    return None


def _send_chunks(t: _Transfer, todo: list[int], res: PushResult) -> int | None:
    """Send ``todo`` paced and windowed, resending what is not answered in time.

    Returns:
        How many chunks the device said it still needs after the last answer (None: no
        answer came, the job ended first).
    """
    aid, opts = t.artifact.manifest.artifact_id, t.opts
    remaining: int | None = None
    inflight: dict[str, tuple[int, float]] = {}
    tokens, last = float(opts.burst), time.monotonic()
    queue = list(todo)
    while (queue or inflight) and not t.ended:
        now = time.monotonic()
        tokens = min(float(opts.burst), tokens + (now - last) * opts.rate_per_s)
        last = now
        while queue and len(inflight) < opts.window and tokens >= 1.0:
            index = queue.pop(0)
            data = t.artifact.chunk(index)
            rid = t.send("artifact-chunk", {"artifact_id": aid, "index": index,
                                            "data": base64.b64encode(data).decode()})
            inflight[rid] = (index, time.monotonic())
            tokens -= 1.0
            res.chunks_sent += 1
            res.bytes_sent += len(data)
        t.pump(0.02)
        for rid in [r for r in inflight if r in t.answers]:
            index, _ = inflight.pop(rid)
            answer = t.answers.pop(rid)
            if not answer.ok and answer.error is not None:
                raise MobizoError(f"{t.device} refused chunk {index}: {answer.error.message}")
            left = (answer.result or {}).get("missing")
            if isinstance(left, int):
                remaining = left if remaining is None else min(remaining, left)
        stale = [r for r, (_, at) in inflight.items() if time.monotonic() - at > opts.retry_s]
        for rid in stale:
            queue.insert(0, inflight.pop(rid)[0])
            res.resent += 1
    return remaining


def push_one(fc: FleetClient, device: str, artifact: Artifact, opts: PushOptions) -> PushResult:
    """Push ``artifact`` to ``device`` and follow its job to the end."""
    m = artifact.manifest
    t = _Transfer(fc, device, artifact, opts)
    res = PushResult(device, ok=False, status="NO ANSWER")
    args = {"manifest": m.model_dump(mode="json"), "health_window_s": opts.health_window_s,
            "transfer_timeout_s": opts.transfer_timeout_s}
    if len(json.dumps({"args": args})) + 300 > opts.max_payload_bytes:
        raise MobizoError(f"the manifest of {m.chunks} chunks does not fit one command of "
                          f"{opts.max_payload_bytes} bytes; use a larger --chunk-size (and "
                          "raise mqtt.command_max_payload_bytes on the devices to match)")
    reply = t.ask(f"push-{m.kind}", args, job_id=t.job_id)
    if not reply.ok:
        res.status, res.detail = "REFUSED", reply.error.message if reply.error else ""
        return res
    if reply.job is not None:
        t.job = t.job or reply.job.model_dump(mode="json")
    started = time.monotonic()
    # the device lists at most 2,000 missing chunks at a time: ask again until none are left
    while (todo := _missing(t)) is not None and todo:
        if _send_chunks(t, todo, res) == 0:
            break  # all there: the device verifies, activates and watches it now
    res.transfer_s = time.monotonic() - started
    deadline = time.monotonic() + opts.health_window_s + opts.answer_timeout_s * 4
    while not t.ended and time.monotonic() < deadline:
        t.pump(0.2)
    if not t.ended:
        res.detail = f"job {t.job_id} not finished in time (last: {t.job})"
        return res
    assert t.job is not None
    res.job, res.status = t.job, str(t.job["status"])
    res.ok = res.status == "SUCCEEDED"
    err = t.job.get("error") or {}
    res.detail = (t.job.get("result") or {}).get("health", "") if res.ok else \
        str(err.get("message") or t.job.get("message", ""))
    return res


def run_push(opts_of: Callable[[argparse.Namespace], BrokerOptions],
             args: argparse.Namespace) -> int:
    """The ``push-adapter`` / ``push-bundle`` subcommand."""
    kind: ArtifactKind = "adapter" if args.command == "push-adapter" else "bundle"
    if (args.device is None) == (not args.all):
        print("error: name one DEVICE or pass --all", file=sys.stderr)
        return 2
    artifact = build_artifact(Path(args.dir), kind, args.chunk_size,
                              getattr(args, "bundle_id", None))
    opts = PushOptions(health_window_s=args.health_window, window=args.window,
                       rate_per_s=args.rate, transfer_timeout_s=args.transfer_timeout,
                       answer_timeout_s=args.timeout)
    results: list[PushResult] = []
    with FleetClient(opts_of(args)) as fc:
        devices = [args.device] if args.device else sorted(
            d for d, v in fc.snapshot().items() if v.online)
        for device in devices:
            try:
                results.append(push_one(fc, device, artifact, opts))
            except FleetError as exc:
                results.append(PushResult(device, ok=False, status="NO ANSWER", detail=str(exc)))
            except MobizoError as exc:
                results.append(PushResult(device, ok=False, status="FAILED", detail=str(exc)))
    print(json.dumps({"artifact_id": artifact.manifest.artifact_id,
                      "bytes": artifact.manifest.total_size,
                      "chunks": artifact.manifest.chunks,
                      "results": [r.as_json() for r in results]}, indent=2))
    if any(r.status == "NO ANSWER" for r in results):
        return EXIT_NO_ANSWER
    return EXIT_OK if results and all(r.ok for r in results) else EXIT_FAILED


def add_push_parsers(sub: Any, opts_of: Callable[[argparse.Namespace], BrokerOptions]) -> None:
    """Register ``push-adapter`` and ``push-bundle`` on the CLI's subparsers."""
    for name, what in (("push-adapter", "a PEFT adapter directory"),
                       ("push-bundle", "a model bundle directory")):
        p = sub.add_parser(name, help=f"deliver {what}: stage, verify, activate, health "
                                      "window, commit or roll back")
        p.add_argument("device", nargs="?", help="the device (or --all)")
        p.add_argument("dir", help=what)
        p.add_argument("--all", action="store_true", help="every online device")
        if name == "push-adapter":
            p.add_argument("--bundle-id", help="the bundle it was trained for (default: its "
                                               "registry manifest.json)")
        p.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE,
                       help="bytes per chunk; base64 of it must fit the devices' "
                            "mqtt.command_max_payload_bytes (default 44 KiB for 64 KiB)")
        p.add_argument("--health-window", type=float, default=10.0,
                       help="seconds it must stay healthy before the device commits it")
        p.add_argument("--rate", type=float, default=18.0, help="chunks a second at most")
        p.add_argument("--window", type=int, default=16, help="unanswered chunks at most")
        p.add_argument("--transfer-timeout", type=float, default=900.0)
        p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for answers")
        p.set_defaults(func=lambda a: run_push(opts_of, a))
