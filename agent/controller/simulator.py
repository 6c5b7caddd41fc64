"""A simulated device: the real fleet link over an in-memory daemon.

Used by the integration tests (as the agent process that gets ``kill -9``-ed), by
``mobizo-bench fleet``, and to try ``mobizo-fleet`` without a board::

    python -m agent.controller.simulator --device sim1 --state-dir /tmp/sim1 \
        --mqtt-json '{"host": "127.0.0.1", "port": 1883, "fleet": "lab"}'

Every handler call is appended to ``<state-dir>/calls.jsonl`` so tests can count them;
accepted desired overrides are written (atomically) to ``<state-dir>/overrides.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from agent.config.mqtt import MqttConfig
from agent.core.commands import (
    Ack,
    CommandFailed,
    CommandRejected,
    JobContext,
    PurgeDataOutput,
    RollbackOutput,
    TrainNowArgs,
    TrainNowOutput,
)
from agent.core.fleet_documents import (
    AdapterInfo,
    ApplyResult,
    BurstInfo,
    ConstraintsInfo,
    FederatedInfo,
    StateDocument,
)
from agent.io.atomic import atomic_write_text

_OVERRIDE_KEYS: dict[str, type] = {"max_steps": int, "lr": float, "log_level": str}


class SimDevice:
    """CommandHandler + StateSource + DesiredConfigSink over plain in-memory data."""

    def __init__(self, state_dir: Path, *, step_s: float = 0.01) -> None:
        self.state_dir = state_dir
        self.step_s = step_s
        self._lock = threading.Lock()
        self.state = "idle"
        self.reason = "waiting for constraints"
        self.versions: list[int] = [1]
        self.active = 1
        self.interactions = 100
        self.last_burst: BurstInfo | None = None
        self.federated: FederatedInfo | None = None  # its last federated round (issue 20)
        self.log_level = "INFO"
        self._calls: Any = None
        overrides = state_dir / "overrides.json"
        self.overrides: dict[str, Any] = (
            json.loads(overrides.read_text()) if overrides.exists() else {}
        )

    def _record(self, name: str, **fields: Any) -> None:
        line = json.dumps({"call": name, "t": time.time(), **fields}, default=str)
        with self._lock:
            if self._calls is None:  # opened on first use, kept open (line-buffered)
                self._calls = open(  # noqa: SIM115 - kept open for the device's lifetime
                    self.state_dir / "calls.jsonl",
                    "a",
                    encoding="utf-8",
                    buffering=1,
                )
            self._calls.write(line + "\n")

    # -- CommandHandler ---------------------------------------------------------------------
    def train_now(self, args: TrainNowArgs, job: JobContext) -> TrainNowOutput:
        self._record("train_now", max_steps=args.max_steps)
        if self.state == "paused" and not args.ignore_constraints:
            raise CommandRejected("training is paused; send resume first")
        steps = args.max_steps or 10
        self.state, self.reason = "training", "fleet request"
        started, loss, done = time.monotonic(), 2.0, 0
        for step in range(steps):
            if job.should_stop():
                break
            time.sleep(self.step_s)
            loss *= 0.99
            done = step + 1
            job.report(done / steps, f"step {done}/{steps}")
        with self._lock:
            version = max(self.versions) + 1
            self.versions.append(version)
            self.active = version
            self.last_burst = BurstInfo(
                steps=done,
                loss=loss,
                duration_s=time.monotonic() - started,
                outcome="completed" if done == steps else "stopped",
                finished_at=time.time(),
            )
            self.state, self.reason = "idle", "burst finished"
        return TrainNowOutput(
            outcome=self.last_burst.outcome or "", steps=done, loss=loss, adapter_version=version
        )

    def pause(self, reason: str) -> Ack:
        self._record("pause", reason=reason)
        self.state, self.reason = "paused", reason
        return Ack(message="paused")

    def resume(self) -> Ack:
        self._record("resume")
        self.state, self.reason = "idle", "resumed by the fleet controller"
        return Ack(message="resumed")

    def rollback(self, version: int | str | None, job: JobContext) -> RollbackOutput:
        self._record("rollback", version=version)
        with self._lock:
            if version is None:
                older = [v for v in self.versions if v < self.active]
                if not older:
                    raise CommandFailed("no previous adapter version to roll back to")
                target = max(older)
            else:
                try:
                    target = int(version)
                except ValueError as exc:
                    raise CommandFailed(f"adapter version {version!r} is not a number") from exc
                if target not in self.versions:
                    raise CommandFailed(
                        f"adapter version {version} does not exist; have {self.versions}"
                    )
            self.active = target
        job.report(1.0, f"active adapter is now v{target}")
        return RollbackOutput(active_version=target)

    def status(self) -> StateDocument:
        self._record("status")
        return self.current_state()

    def purge_data(self, before: datetime | None, job: JobContext) -> PurgeDataOutput:
        self._record("purge_data", before=before)
        with self._lock:
            deleted = self.interactions if before is None else self.interactions // 2
            self.interactions -= deleted
        return PurgeDataOutput(deleted=deleted)

    def set_log_level(self, level: str) -> Ack:
        self._record("set_log_level", level=level)
        self.log_level = level
        logging.getLogger().setLevel(level)
        return Ack(message=f"log level {level}")

    # -- StateSource --------------------------------------------------------------------------
    def current_state(self) -> StateDocument:
        with self._lock:
            return StateDocument(
                state=self.state,
                reason=self.reason,
                adapter=AdapterInfo(version=self.active, eval_metrics={"heldout_loss": 1.5}),
                last_burst=self.last_burst,
                constraints=ConstraintsInfo(
                    power="mains", battery_pct=None, thermal="nominal", idle=True
                ),
                store_counts={"interactions": self.interactions},
                federated=self.federated,
                versions={"agent": "sim", "overrides": json.dumps(self.overrides, sort_keys=True)},
            )

    # -- DesiredConfigSink -------------------------------------------------------------------
    def apply(self, version: int, document: dict[str, Any]) -> ApplyResult:
        self._record("apply", version=version)
        errors = []
        for key, value in document.items():
            want = _OVERRIDE_KEYS.get(key)
            if want is None:
                errors.append(f"{key}: unknown setting")
            elif not isinstance(value, want) or isinstance(value, bool):
                errors.append(f"{key}: expected {want.__name__}, got {type(value).__name__}")
        if errors:
            return ApplyResult(errors=errors)
        self.overrides = dict(document)
        atomic_write_text(self.state_dir / "overrides.json", json.dumps(self.overrides))
        return ApplyResult(applied_version=version)

    def boot_problems(self) -> list[str]:
        return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.controller.simulator",
                                     description=__doc__)
    parser.add_argument("--device", required=True, help="device id")
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--mqtt-json", default="{}", help="[mqtt] fields as a JSON object")
    parser.add_argument("--step-s", type=float, default=0.01, help="simulated training step time")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s: %(message)s")
    # Imported here so `--help` stays instant.
    from agent.services.fleet.link import FleetLink

    args.state_dir.mkdir(parents=True, exist_ok=True)
    config = MqttConfig.model_validate({"enabled": True, **json.loads(args.mqtt_json)})
    device = SimDevice(args.state_dir, step_s=args.step_s)
    link = FleetLink(
        config,
        device_id=args.device,
        state_dir=args.state_dir,
        handler=device,
        state_source=device,
        config_sink=device,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    link.start()
    print("started", flush=True)
    tick = 0
    while not stop.wait(0.5):
        tick += 1
        link.record_point(tick, 2.0 / tick)
    link.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
