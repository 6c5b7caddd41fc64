"""What the fleet link receives: commands, desired config, and our own ``available`` topic.

A command is parsed (:func:`agent.core.commands.parse_command`); a short one runs at once, a
long one becomes a job (:class:`agent.services.fleet.jobs.FleetJobs`); either way a reply goes
to the MQTT 5 response topic, else the request's ``reply_to``, else
``<prefix>/cmd-result/<request_id>``. Desired config is validated and applied by the daemon's
:class:`~agent.core.fleet_documents.DesiredConfigSink`; the outcome is retained on
``config/reported``. A malformed message gets an error reply, never a crash.
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
from agent.core.fleet_documents import DesiredConfig, DesiredConfigSink, ReportedConfig
from agent.io.fleet_store import FleetStore
from agent.io.mqtt import Inbound
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
    def republish_reported_config(self) -> None:
        """Re-assert the last reported config (on connect; the broker may have lost it)."""
        reported = self.store.get("config_reported")
        if reported is not None:
            self.transport.publish(
                self.topics.config_reported, reported.encode(), qos=self.config.qos, retain=True
            )

    def _on_desired(self, msg: Inbound) -> None:
        if not msg.payload:
            return  # retained message cleared
        applied = self.store.get("config_applied_version")
        last = int(applied) if applied is not None else None
        errors: list[str]
        version: int | None = None
        if len(msg.payload) > self.config.command_max_payload_bytes:
            errors = [
                f"desired config is {len(msg.payload)} bytes; limit "
                f"{self.config.command_max_payload_bytes}"
            ]
        else:
            try:
                desired = DesiredConfig.model_validate_json(msg.payload)
            except ValidationError as exc:
                errors = [
                    f"{'.'.join(map(str, e['loc'])) or 'payload'}: {e['msg']}"
                    for e in exc.errors()[:10]
                ]
            else:
                version = desired.version
                if last is not None and version <= last:
                    log.info("ignoring stale desired config v%d (applied v%d)", version, last)
                    return
                try:
                    result = self.config_sink.apply(version, desired.config)
                    errors = list(result.errors)
                except Exception as exc:  # noqa: BLE001 - a sink crash is a rejection, not ours
                    errors = [f"applying failed: {type(exc).__name__}: {exc}"]
                if not errors:
                    self.store.put("config_applied_version", str(version))
                    last = version
        reported = ReportedConfig(
            version=last,
            status="rejected" if errors else "applied",
            rejected_version=version if errors else None,
            errors=errors,
            ts=self.clock(),
        )
        text = reported.model_dump_json()
        self.store.put("config_reported", text)
        self.transport.publish(
            self.topics.config_reported, text.encode(), qos=self.config.qos, retain=True
        )

    # -- commands -------------------------------------------------------------------------
    def _on_command(self, msg: Inbound) -> None:
        name = msg.topic[len(self.topics.prefix) + len("/cmd/") :]
        parsed = parse_command(
            name,
            msg.payload,
            now=self.clock(),
            max_payload_bytes=self.config.command_max_payload_bytes,
        )
        if (
            isinstance(parsed, ParsedCommand)
            and msg.expiry_s is not None
            and time.monotonic() > msg.received_at + msg.expiry_s
        ):
            # MQTT 5 message expiry: the broker drops expired messages; we honour it too for
            # messages that expired while waiting in our own inbox.
            parsed = ParseError(
                "expired",
                "message expiry interval passed before it was run",
                parsed.request.request_id,
                parsed.request.reply_to,
            )
        if isinstance(parsed, ParseError):
            result = error_result(parsed, command=name, device_id=self.device_id, now=self.clock())
            self._reply(msg, parsed.reply_to, result)
            return
        if not parsed.spec.long:
            result = run_short(self.handler, parsed, device_id=self.device_id, clock=self.clock)
            self._reply(msg, parsed.request.reply_to, result)
            if parsed.spec.name in ("pause", "resume") and result.ok:
                self._poll_state_now()
            return
        self._reply(msg, parsed.request.reply_to, self.jobs.submit(parsed, msg))

    def _reply(self, msg: Inbound, reply_to: str | None, result: CommandResult) -> None:
        topic = msg.response_topic or reply_to
        if topic is None and result.request_id is not None:
            topic = self.topics.cmd_result(result.request_id)
        if topic is None:
            log.warning(
                "command on %s has no reply route (no response topic, reply_to or "
                "request_id); result dropped: %s",
                msg.topic,
                result.error,
            )
            return
        self.transport.publish(
            topic, wire_bytes(result), qos=self.config.qos, correlation_data=msg.correlation_data
        )
        self.replies_sent += 1
