"""The fleet link: the agent's side of the MQTT conversation with the fleet controller.

Wires the pure parts (:mod:`agent.core.topics`, :mod:`agent.core.commands`,
:mod:`agent.core.jobs`) to the adapters (:mod:`agent.io.mqtt`, :mod:`agent.io.spool`,
:mod:`agent.io.fleet_store`) and to the daemon through three small protocols
(:class:`CommandHandler`, :class:`StateSource`, :class:`DesiredConfigSink`).

Threads: the transport's network thread only enqueues; one worker thread handles every event
and the periodic state / telemetry ticks in order; one job thread runs long commands one at a
time (each in a helper thread so its deadline can be enforced). Nothing here imports torch.

On each connect: subscriptions are renewed (by the transport), then the latest state is
published (retained), then the birth, then spooled telemetry in order.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import resource
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agent.config.mqtt import MqttConfig
from agent.core import jobs as jobsm
from agent.core.commands import (
    COMMANDS,
    Availability,
    CommandHandler,
    CommandRequest,
    CommandResult,
    DesiredConfig,
    DesiredConfigSink,
    ErrorInfo,
    ParsedCommand,
    ParseError,
    ReportedConfig,
    StateDocument,
    StateSource,
    Telemetry,
    TelemetryPoint,
    error_of,
    error_result,
    execute,
    parse_command,
    run_short,
)
from agent.core.topics import DeviceTopics
from agent.io.fleet_store import FleetStore
from agent.io.mqtt import Connected, Disconnected, Inbound, MqttTransport, TransportSettings, Will
from agent.io.spool import Spool

log = logging.getLogger(__name__)

_DRAIN_BATCH = 200
_TERMINAL_JOBS_KEPT = 1000  # job ids remembered for duplicate detection


def _json(model: Any) -> bytes:
    return model.model_dump_json(exclude_none=False).encode()


def process_resources() -> dict[str, float]:
    """CPU seconds and resident memory of this process (from getrusage and /proc)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out = {"cpu_s": usage.ru_utime + usage.ru_stime, "max_rss_mb": usage.ru_maxrss / 1024}
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            out["rss_mb"] = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        pass
    return out


class _Poke:
    """Inbox item asking the worker to check the state now."""


class _JobRun:
    """JobContext for one running job: progress goes to the store and ``jobs/<id>``."""

    def __init__(self, link: FleetLink, job: jobsm.Job) -> None:
        self._link = link
        self.job = job
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._last_pub = 0.0

    def report(self, fraction: float | None, message: str) -> None:
        with self._lock:
            if self.job.terminal:
                return
            self.job = jobsm.transition(
                self.job,
                jobsm.JobStatus.IN_PROGRESS,
                now=self._link.clock(),
                progress=fraction,
                message=message,
            )
            job = self.job
            # Progress is persisted every time but published at most ~5/s.
            publish = time.monotonic() - self._last_pub > 0.2
            if publish:
                self._last_pub = time.monotonic()
        self._link.store.save_job(job)
        if publish:
            self._link.publish_job(job)

    def should_stop(self) -> bool:
        return self.stop.is_set()

    def finish(self, job: jobsm.Job) -> None:
        with self._lock:
            self.job = job


class FleetLink:
    """The MQTT fleet link of one device. ``start()`` then ``stop()``; or use ``with``."""

    def __init__(
        self,
        config: MqttConfig,
        *,
        device_id: str,
        state_dir: Path,
        handler: CommandHandler,
        state_source: StateSource,
        config_sink: DesiredConfigSink,
        clock: Callable[[], float] = time.time,
        password: str | None = None,
    ) -> None:
        """Build the link; nothing connects before :meth:`start`.

        Args:
            config: the ``[mqtt]`` section.
            device_id: this device's id (topic segment).
            state_dir: directory for ``fleet.db`` (jobs, session seq) and ``spool.db``.
            handler, state_source, config_sink: the daemon's side.
            clock: wall clock for timestamps, expiries and deadlines.
            password: broker password; default read from ``config.password_file``.
        """
        self.config = config
        self.device_id = device_id
        self.topics = DeviceTopics.for_device(config.fleet, device_id)
        self.handler, self.state_source, self.config_sink = handler, state_source, config_sink
        self.clock = clock
        state_dir.mkdir(parents=True, exist_ok=True)
        self.store = FleetStore(state_dir / "fleet.db")
        self.spool = Spool(
            state_dir / "spool.db",
            max_bytes=config.spool_max_bytes,
            max_age_s=config.spool_max_age_s,
            clock=clock,
        )
        self.session_seq = int(self.store.get("session_seq") or 0)
        self._inbox: queue.Queue[Any] = queue.Queue(maxsize=config.inbox_max)
        self._jobq: queue.Queue[str] = queue.Queue()
        self._stop = threading.Event()
        self._points: deque[TelemetryPoint] = deque(maxlen=config.telemetry_max_points)
        self._points_lock = threading.Lock()
        self._last_state: dict[str, Any] | None = None
        self._last_state_at = 0.0
        self._next_state_poll = 0.0
        self._next_telemetry = time.monotonic() + config.telemetry_interval_s
        self._stale_jobs: set[str] = set()
        self._job_pub_lock = threading.Lock()
        self._last_birth_fix = 0.0
        self._stopped = False
        self._terminal_published: dict[str, None] = {}  # insertion-ordered, bounded
        self._threads: list[threading.Thread] = []
        self.replies_sent = 0
        tls = config.tls
        self.transport = MqttTransport(
            TransportSettings(
                host=config.host,
                port=config.port,
                client_id=config.resolved_client_id(device_id),
                protocol=config.protocol,
                keepalive_s=config.keepalive_s,
                username=config.username,
                password=password if password is not None else config.read_password(),
                tls=tls.enabled,
                ca_file=tls.ca_file,
                cert_file=tls.cert_file,
                key_file=tls.key_file,
                tls_insecure=tls.insecure_skip_hostname_check,
                reconnect_min_s=config.reconnect_min_s,
                reconnect_max_s=config.reconnect_max_s,
                reconnect_jitter=config.reconnect_jitter,
                max_packet_bytes=config.max_packet_bytes,
            ),
            self._inbox,
            subscriptions=[(t, 1) for t in self.topics.subscriptions],
            will=self._next_will,
        )

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Recover persisted jobs, then start the worker, job and network threads."""
        now = self.clock()
        for job in self.store.open_jobs():
            recovered = jobsm.recover(job, now)
            if recovered is not job:
                self.store.save_job(recovered)
                self._stale_jobs.add(recovered.job_id)
                log.warning("job %s after restart: %s", job.job_id, recovered.status)
            else:
                self._jobq.put(job.job_id)
        for target, name in ((self._work, "fleet-worker"), (self._run_jobs, "fleet-jobs")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        self.transport.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Publish ``stopped`` (retained), disconnect cleanly, stop the threads. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._stop.set()
        self._jobq.put("")  # wakes the job thread; an empty id is never a job
        with contextlib.suppress(queue.Full):
            self._inbox.put_nowait(_Poke())
        for thread in self._threads:
            thread.join(timeout)
        stopped = Availability(
            status="stopped",
            session_seq=self.session_seq,
            device_id=self.device_id,
            ts=self.clock(),
        )
        self.transport.stop(final=(self.topics.available, _json(stopped)), timeout=timeout)
        self.store.close()
        self.spool.close()

    def __enter__(self) -> FleetLink:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- API for the daemon ---------------------------------------------------------------
    def state_changed(self) -> None:
        """Ask for the state to be checked and published now (cheap; any thread)."""
        with contextlib.suppress(queue.Full):  # a full inbox will poll the state soon anyway
            self._inbox.put_nowait(_Poke())

    def record_point(self, step: int | None, loss: float | None, **extra: float) -> None:
        """Add a loss-curve point to the next telemetry message (any thread)."""
        with self._points_lock:
            self._points.append(TelemetryPoint(ts=self.clock(), step=step, loss=loss, extra=extra))

    @property
    def connected(self) -> bool:
        return self.transport.connected

    # -- will / birth ---------------------------------------------------------------------
    def _next_will(self) -> Will:
        # Called by the network thread before every connect attempt: a new session, a new seq.
        self.session_seq = self.store.next_session_seq()
        offline = Availability(
            status="offline", session_seq=self.session_seq, device_id=self.device_id
        )
        return Will(self.topics.available, _json(offline), qos=1, retain=True)

    def _publish_birth(self) -> None:
        online = Availability(
            status="online", session_seq=self.session_seq, device_id=self.device_id, ts=self.clock()
        )
        self.transport.publish(self.topics.available, _json(online), qos=1, retain=True)

    # -- worker ---------------------------------------------------------------------------
    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                # Sleep until the next periodic duty (few wakeups when idle: battery, CPU).
                wait = min(self._next_state_poll, self._next_telemetry) - time.monotonic()
                event = self._inbox.get(timeout=min(1.0, max(0.005, wait)))
            except queue.Empty:
                event = None
            try:
                if event is not None:
                    self._handle(event)
                self._tick()
            except Exception:  # noqa: BLE001 - the link must keep serving whatever happens
                log.exception("fleet link worker: unexpected error (continuing)")

    def _handle(self, event: Any) -> None:
        if isinstance(event, Inbound):
            self._on_message(event)
        elif isinstance(event, Connected):
            self._on_connected()
        elif isinstance(event, Disconnected):
            log.info("fleet broker connection lost: %s", event.reason)
        elif isinstance(event, _Poke):
            self._next_state_poll = 0.0

    def _on_connected(self) -> None:
        log.info("connected to fleet broker (session %d)", self.session_seq)
        self._publish_state(force=True)  # the latest state first (supersedes any spooled one)
        self._publish_birth()
        reported = self.store.get("config_reported")
        if reported is not None:
            self.transport.publish(
                self.topics.config_reported, reported.encode(), qos=self.config.qos, retain=True
            )
        # Job updates that could not be published while offline, oldest change first.
        stale = [j for j in map(self.store.get_job, list(self._stale_jobs)) if j is not None]
        for job in sorted(stale, key=lambda j: j.updated_at):
            if self.publish_job(job):
                self._stale_jobs.discard(job.job_id)
        self._drain_spool()

    def _tick(self) -> None:
        now = time.monotonic()
        if now >= self._next_state_poll:
            self._next_state_poll = now + self.config.state_poll_s
            self._publish_state(force=False)
        if now >= self._next_telemetry:
            self._next_telemetry = now + self.config.telemetry_interval_s
            self._publish_telemetry()

    # -- state and telemetry --------------------------------------------------------------
    def _publish_state(self, *, force: bool) -> None:
        try:
            doc = self.state_source.current_state()
        except Exception:  # noqa: BLE001 - a broken source must not stop the link
            log.exception("state source failed")
            return
        content = doc.model_dump(mode="json", exclude={"ts", "session_seq"})
        due = time.monotonic() - self._last_state_at >= self.config.state_interval_s
        if not (force or due or content != self._last_state):
            return
        doc = doc.model_copy(update={"ts": self.clock(), "session_seq": self.session_seq})
        payload = _json(doc)
        if self.transport.publish(self.topics.state, payload, qos=self.config.qos, retain=True):
            peek = self.spool.peek_state()
            if peek is not None:
                self.spool.clear_state(peek.ts)
        else:
            self.spool.put_state(self.topics.state, payload)
        self._last_state = content
        self._last_state_at = time.monotonic()

    def _publish_telemetry(self) -> None:
        with self._points_lock:
            points = list(self._points)
            self._points.clear()
        message = Telemetry(
            ts=self.clock(),
            session_seq=self.session_seq,
            points=points,
            resources=process_resources(),
        )
        payload = _json(message)
        # Live only when nothing older waits in the spool, so order is kept.
        if self.spool.stats()[0] == 0 and self.transport.publish(
            self.topics.telemetry, payload, qos=self.config.telemetry_qos
        ):
            return
        self.spool.append(self.topics.telemetry, payload)
        self._drain_spool()

    def _drain_spool(self) -> None:
        """Publish spooled telemetry in order; delete rows once handed over.

        The backlog goes at the live telemetry's QoS: MQTT orders messages on a topic only
        within one QoS level, and a broker may let QoS 0 overtake queued QoS 1 messages.
        "Handed over" is the PUBACK at QoS 1, the socket write at QoS 0 (a connection that
        dies right then loses those few; rows not yet written stay for the next connect).
        """
        while self.transport.connected and not self._stop.is_set():
            batch = self.spool.peek(_DRAIN_BATCH)
            if not batch:
                return
            infos = []
            for entry in batch:
                info = self.transport.publish(
                    entry.topic, entry.payload, qos=self.config.telemetry_qos
                )
                if info is None:
                    break
                infos.append((entry.id, info))
            acked = None
            for entry_id, info in infos:
                deadline = time.monotonic() + 10.0
                while not info.is_published() and time.monotonic() < deadline:
                    if not self.transport.connected:
                        break
                    time.sleep(0.005)
                if not info.is_published():
                    break
                acked = entry_id
            if acked is not None:
                self.spool.ack(acked)
            if acked is None or len(infos) < len(batch) or acked != batch[-1].id:
                return

    # -- inbound --------------------------------------------------------------------------
    def _on_message(self, msg: Inbound) -> None:
        topic = msg.topic
        if topic == self.topics.available:
            self._on_available(msg)
        elif topic == self.topics.config_desired:
            self._on_desired(msg)
        elif topic.startswith(self.topics.prefix + "/cmd/"):
            self._on_command(msg)
        else:
            # Only our own topics are subscribed; anything else is ignored on purpose.
            log.debug("ignoring message on %s", topic)

    def _on_available(self, msg: Inbound) -> None:
        """A retained will from an older session may land after our birth: re-assert it.

        Only an *older* session is overridden; a newer seq means another process claims this
        device id (a misconfiguration), and fighting it would be a birth storm.
        """
        if not self.transport.connected:
            return
        try:
            seen: Availability | None = Availability.model_validate_json(msg.payload)
        except ValidationError:
            seen = None
        if seen is not None and seen.status == "online" and seen.session_seq == self.session_seq:
            return
        if seen is not None and seen.session_seq > self.session_seq:
            log.error(
                "another agent publishes as device %s (session %d > ours %d); check device_id",
                self.device_id,
                seen.session_seq,
                self.session_seq,
            )
            return
        if time.monotonic() - self._last_birth_fix < 1.0:
            return
        self._last_birth_fix = time.monotonic()
        log.info("availability overwritten by %s; republishing birth", seen)
        self._publish_birth()

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
                self._next_state_poll = 0.0
            return
        self._reply(msg, parsed.request.reply_to, self._submit_job(parsed, msg))

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
            topic, _json(result), qos=self.config.qos, correlation_data=msg.correlation_data
        )
        self.replies_sent += 1

    # -- jobs -----------------------------------------------------------------------------
    def _submit_job(self, parsed: ParsedCommand, msg: Inbound) -> CommandResult:
        req = parsed.request
        job_id = (
            req.job_id
            or req.request_id
            or (msg.correlation_data.hex()[:128] if msg.correlation_data else uuid.uuid4().hex)
        )
        now = self.clock()
        job = jobsm.new_job(
            job_id,
            parsed.spec.name,
            parsed.args.model_dump(mode="json"),
            request_id=req.request_id,
            now=now,
            timeout_s=self.config.job_timeout_s,
        )
        existing = self.store.insert_job(job)
        if existing is not None:
            # A QoS 1 redelivery or a repeated id: never run twice; report where it is.
            return CommandResult(
                request_id=req.request_id,
                command=parsed.spec.name,
                device_id=self.device_id,
                ok=existing.status is not jobsm.JobStatus.REJECTED,
                job=existing.view(),
                duplicate=True,
                ts=now,
            )
        if self._jobq.qsize() >= self.config.max_queued_jobs:
            job = jobsm.transition(
                job,
                jobsm.JobStatus.REJECTED,
                now=now,
                message="too many queued jobs",
                error=ErrorInfo(
                    code="rejected",
                    message=f"{self._jobq.qsize()} jobs already queued; retry later",
                ),
            )
            self.store.save_job(job)
            self.publish_job(job)
        else:
            self.publish_job(job)  # before the runner can move it on: retained order matters
            self._jobq.put(job_id)
        self.store.prune_terminal(_TERMINAL_JOBS_KEPT)
        return CommandResult(
            request_id=req.request_id,
            command=parsed.spec.name,
            device_id=self.device_id,
            ok=job.status is not jobsm.JobStatus.REJECTED,
            job=job.view(),
            error=job.error,
            ts=now,
        )

    def publish_job(self, job: jobsm.Job) -> bool:
        """Publish a job update (retained). Serialised, and never after its terminal update,
        so a late progress report cannot overwrite the final state on the broker."""
        with self._job_pub_lock:
            if job.job_id in self._terminal_published and not job.terminal:
                return True
            ok = (
                self.transport.publish(
                    self.topics.job(job.job_id), _json(job.view()), qos=self.config.qos, retain=True
                )
                is not None
            )
            if not ok:
                self._stale_jobs.add(job.job_id)
            elif job.terminal:
                self._terminal_published[job.job_id] = None
                while len(self._terminal_published) > _TERMINAL_JOBS_KEPT:
                    self._terminal_published.pop(next(iter(self._terminal_published)))
            return ok

    def _run_jobs(self) -> None:
        while not self._stop.is_set():
            try:
                job_id = self._jobq.get(timeout=1.0)
            except queue.Empty:
                continue
            try:
                self._run_job(job_id)
            except Exception:  # noqa: BLE001
                log.exception("job %s: unexpected error", job_id)

    def _run_job(self, job_id: str) -> None:
        job = self.store.get_job(job_id)
        if job is None or job.terminal:
            return
        late = jobsm.timed_out(job, self.clock())
        if late is not None:
            self._finish(late)
            return
        spec = COMMANDS[job.command]
        parsed = ParsedCommand(spec, _request_of(job), spec.args_model.model_validate(job.args))
        job = jobsm.transition(
            job, jobsm.JobStatus.IN_PROGRESS, now=self.clock(), progress=0.0, message="started"
        )
        self.store.save_job(job)
        self.publish_job(job)
        run = _JobRun(self, job)
        outcome: dict[str, Any] = {}

        def target() -> None:
            try:
                outcome["output"] = execute(self.handler, parsed, run)
            except BaseException as exc:  # noqa: BLE001 - reported as the job's error
                outcome["error"] = exc

        worker = threading.Thread(target=target, name=f"job-{job_id}", daemon=True)
        worker.start()
        while worker.is_alive() and self.clock() < job.deadline and not self._stop.is_set():
            worker.join(0.1)
        now = self.clock()
        current = run.job
        if worker.is_alive():
            run.stop.set()
            if self._stop.is_set():
                return  # shutting down: left IN_PROGRESS, failed explicitly at next start
            final = jobsm.timed_out(current, now) or jobsm.transition(
                current,
                jobsm.JobStatus.TIMED_OUT,
                now=now,
                error=ErrorInfo(code="timed_out", message="deadline passed"),
            )
        elif "error" in outcome:
            err = error_of(outcome["error"])
            status = jobsm.JobStatus.REJECTED if err.code == "rejected" else jobsm.JobStatus.FAILED
            final = jobsm.transition(current, status, now=now, message=err.message, error=err)
        else:
            final = jobsm.transition(
                current,
                jobsm.JobStatus.SUCCEEDED,
                now=now,
                message="done",
                result=outcome["output"].model_dump(mode="json"),
            )
        run.finish(final)
        self._finish(final)

    def _finish(self, job: jobsm.Job) -> None:
        self.store.save_job(job)
        self.publish_job(job)
        self.state_changed()  # a finished job usually changed the state: publish it now


def _request_of(job: jobsm.Job) -> CommandRequest:
    return CommandRequest(request_id=job.request_id, job_id=job.job_id, args=job.args)


def state_document_json(doc: StateDocument) -> str:
    """Stable JSON of a state document (used by tools and tests)."""
    return json.dumps(doc.model_dump(mode="json"), sort_keys=True)
