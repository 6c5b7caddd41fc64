"""What the fleet link receives: commands, desired config, and our own ``available`` topic.

A command is parsed (:func:`agent.core.commands.parse_command`); a short one runs at once, a
long one becomes a job (:class:`agent.services.fleet.jobs.FleetJobs`); either way a reply goes
to the MQTT 5 response topic, else the request's ``reply_to``, else
``<prefix>/cmd-result/<request_id>``. Desired config is validated and applied by the daemon's
:class:`~agent.core.fleet_documents.DesiredConfigSink`; the outcome is retained on
``config/reported``. A malformed message gets an error reply, never a crash.

What the fleet can never make it do (docs/security.md): run a retained command (it would run
again at every reconnect: refused with an error reply), reply outside the controllers' reply
namespace or its own ``cmd-result/`` (refused, not run), parse a payload over the limit (the
transport dropped it unread) or nested deeper than ``max_json_depth``, or take a version at or
above 2**53 (refused) or older than the applied one (reported stale; the controller may reset
the sequence with a document marked ``reset``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from pydantic import ValidationError

from agent.config.mqtt import MqttConfig
from agent.core.commands import (
    CommandHandler,
    CommandResult,
    ParsedCommand,
    ParseError,
    error_result,
    parse_command,
    run_short,
)
from agent.core.fleet_documents import (
    MAX_CONFIG_VERSION,
    ApplyResult,
    DesiredConfig,
    DesiredConfigSink,
    ReportedConfig,
)
from agent.core.json_depth import json_depth_exceeds
from agent.io.fleet_store import FleetStore
from agent.io.mqtt import Inbound
from agent.services.fleet import job_commands
from agent.services.fleet.jobs import FleetJobs
from agent.services.fleet.session import FleetSession, wire_bytes

log = logging.getLogger(__name__)


class FleetInbound:
    """Handles each inbound message on the link's worker thread (:meth:`on_message`).

    Args:
        config: the ``[mqtt]`` section (payload limit, QoS).
        session: the session (transport, topics, availability).
        store: where the applied / reported config version persists.
        handler: the daemon's side that runs commands.
        config_sink: the daemon's side that applies desired config.
        jobs: where long commands go.
        clock: wall clock for timestamps and expiries.
        poll_state_now: makes the worker check the state right after this message (a
            pause / resume changed it).
    """

    def __init__(
        self,
        config: MqttConfig,
        *,
        session: FleetSession,
        store: FleetStore,
        handler: CommandHandler,
        config_sink: DesiredConfigSink,
        jobs: FleetJobs,
        clock: Callable[[], float],
        poll_state_now: Callable[[], None],
    ) -> None:
        self.config = config
        self.session = session
        self.transport = session.transport
        self.topics = session.topics
        self.device_id = session.device_id
        self.store = store
        self.handler = handler
        self.config_sink = config_sink
        self.jobs = jobs
        self.clock = clock
        self._poll_state_now = poll_state_now
        self.replies_sent = 0

    def on_message(self, msg: Inbound) -> None:
        topic = msg.topic
        if topic == self.topics.available:
            self.session.on_available(msg)
        elif topic == self.topics.config_desired:
            self._on_desired(msg)
        elif topic.startswith(self.topics.prefix + "/cmd/"):
            self._on_command(msg)
        else:
            # Only our own topics are subscribed; anything else is ignored on purpose.
            log.debug("ignoring message on %s", topic)

    # -- desired config -------------------------------------------------------------------
    def report_boot_problems(self) -> None:
        """At start: if the saved overrides were not replayed, say why on ``config/reported``
        (published on connect) and forget the applied version, so the controller's desired
        config is judged afresh."""
        problems = self.config_sink.boot_problems()
        if not problems:
            return
        previous = self._applied_version()
        self.store.put("config_applied_version", "")
        report = ReportedConfig(version=None, status="rejected", rejected_version=previous,
                                errors=problems, ts=self.clock())
        self.store.put("config_reported", report.model_dump_json())

    def republish_reported_config(self) -> None:
        """Re-assert the last reported config (on connect; the broker may have lost it)."""
        reported = self.store.get("config_reported")
        if reported is not None:
            self.transport.publish(
                self.topics.config_reported, reported.encode(), qos=self.config.qos, retain=True
            )

    def _applied_version(self) -> int | None:
        raw = self.store.get("config_applied_version")
        try:
            version = int(raw) if raw else None
        except ValueError:
            version = None
        if version is not None and not 0 <= version <= MAX_CONFIG_VERSION:
            # Saved by an older agent that took any integer: one huge version would block
            # every later one for good.
            log.warning("ignoring the saved desired-config version %d (out of range)", version)
            return None
        return version

    def _read_desired(self, msg: Inbound) -> DesiredConfig | list[str]:
        limit = self.config.command_max_payload_bytes
        size = msg.oversize or len(msg.payload)
        if size > limit:
            return [f"desired config is {size} bytes; limit {limit}"]
        if json_depth_exceeds(msg.payload, self.config.max_json_depth):
            return [f"desired config nests deeper than {self.config.max_json_depth} levels"]
        try:
            return DesiredConfig.model_validate_json(msg.payload)
        except ValidationError as exc:
            return [
                f"{'.'.join(map(str, e['loc'])) or 'payload'}: {e['msg']}"
                for e in exc.errors()[:10]
            ]

    def _on_desired(self, msg: Inbound) -> None:
        if not msg.payload and not msg.oversize:
            return  # retained message cleared
        last = self._applied_version()
        desired = self._read_desired(msg)
        version: int | None = None
        result = ApplyResult()
        if isinstance(desired, list):
            result = ApplyResult(errors=desired)
        else:
            version = desired.version
            if version == last:
                return  # already in effect (the retained document, redelivered on connect)
            if last is not None and version < last and not desired.reset:
                log.info("stale desired config v%d (applied v%d)", version, last)
                result = ApplyResult(errors=[
                    f"stale: version {version} is older than the applied version {last}; "
                    "publish a newer one, or reset the sequence (`mobizo-fleet config reset`)"
                ])
            else:
                result = self._apply(version, desired.config)
            if not result.errors:
                self.store.put("config_applied_version", str(version))
                last = version
        self._report(ReportedConfig(
            version=last,
            status="rejected" if result.errors else "applied",
            rejected_version=version if result.errors else None,
            errors=result.errors,
            warnings=result.warnings,
            ts=self.clock(),
        ))

    def _apply(self, version: int, document: dict[str, object]) -> ApplyResult:
        try:
            return self.config_sink.apply(version, document)
        except Exception as exc:  # noqa: BLE001 - a sink crash is a rejection, not ours
            return ApplyResult(errors=[f"applying failed: {type(exc).__name__}: {exc}"])

    def _report(self, reported: ReportedConfig) -> None:
        text = reported.model_dump_json()
        self.store.put("config_reported", text)
        self.transport.publish(
            self.topics.config_reported, text.encode(), qos=self.config.qos, retain=True
        )

    # -- commands -------------------------------------------------------------------------
    def _on_command(self, msg: Inbound) -> None:
        name = msg.topic[len(self.topics.prefix) + len("/cmd/") :]
        parsed: ParsedCommand | ParseError
        if msg.oversize:
            parsed = ParseError(
                "payload_too_large",
                f"payload is {msg.oversize} bytes; the limit is "
                f"{self.config.command_max_payload_bytes}; dropped unread",
            )
        else:
            parsed = parse_command(
                name,
                msg.payload,
                now=self.clock(),
                max_payload_bytes=self.config.command_max_payload_bytes,
                max_depth=self.config.max_json_depth,
            )
        if isinstance(parsed, ParsedCommand):
            parsed = self._refusal(msg, parsed) or parsed
        if isinstance(parsed, ParseError):
            result = error_result(parsed, command=name, device_id=self.device_id, now=self.clock())
            self._reply(msg, parsed.reply_to, result)
            return
        if parsed.spec.by_link:  # cancel, ack-jobs: the link's own job bookkeeping
            result = job_commands.answer(self.jobs, parsed, device_id=self.device_id,
                                         now=self.clock())
            self._reply(msg, parsed.request.reply_to, result)
            return
        if not parsed.spec.long:
            result = run_short(self.handler, parsed, device_id=self.device_id, clock=self.clock)
            self._reply(msg, parsed.request.reply_to, result)
            if parsed.spec.name in ("pause", "resume") and result.ok:
                self._poll_state_now()
            return
        self._reply(msg, parsed.request.reply_to, self.jobs.submit(parsed, msg))

    def _refusal(self, msg: Inbound, parsed: ParsedCommand) -> ParseError | None:
        """Why a well-formed command must not run: retained, a foreign reply topic, expired."""
        rid, reply_to = parsed.request.request_id, parsed.request.reply_to
        if msg.retain:
            return ParseError(
                "rejected",
                "retained command messages are never run (they would run again at every "
                f"reconnect); publish commands without retain, and clear this one with an "
                f"empty retained message on {msg.topic}",
                rid,
                reply_to,
            )
        for topic in (msg.response_topic, reply_to):
            if topic is not None and not self.topics.reply_allowed(topic):
                return ParseError(
                    "bad_request",
                    f"reply topic {topic[:200]!r} is outside the controllers' reply namespace "
                    f"({self.topics.controllers_prefix}...) and this device's cmd-result/; "
                    "not run",
                    rid,
                    None,
                )
        if msg.expiry_s is not None and time.monotonic() > msg.received_at + msg.expiry_s:
            # MQTT 5 message expiry: the broker drops expired messages; we honour it too for
            # messages that expired while waiting in our own inbox.
            return ParseError(
                "expired", "message expiry interval passed before it was run", rid, reply_to
            )
        return None

    def _route(self, msg: Inbound, reply_to: str | None, request_id: str | None) -> str | None:
        for topic in (msg.response_topic, reply_to):
            if topic is not None and self.topics.reply_allowed(topic):
                return topic
        return self.topics.cmd_result(request_id) if request_id is not None else None

    def _reply(self, msg: Inbound, reply_to: str | None, result: CommandResult) -> None:
        topic = self._route(msg, reply_to, result.request_id)
        if topic is None:
            log.warning(
                "command on %s has no reply route (no allowed response topic, reply_to or "
                "request_id); result dropped: %s",
                msg.topic,
                result.error,
            )
            return
        self.transport.publish(
            topic, wire_bytes(result), qos=self.config.qos, correlation_data=msg.correlation_data
        )
        self.replies_sent += 1
