"""The composition root of ``mobizo-agent run``: builds the real adapters and services.

Everything the daemon talks to is made here, once, and handed in (STYLE.md: inject, don't
patch): the config, the interaction store, the adapter registry (validated against the
bundle), the sysfs sensors, the inference-service client, the sd_notify sender, the control
socket and — when ``[mqtt].enabled`` — the fleet link. Services start in a flat order and stop
in reverse; one shared stop :class:`threading.Event` ends them all.

Start-up order matters for systemd: READY=1 is sent once the config is valid and the store and
registry are open — never after waiting for the network (the fleet link connects in the
background).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config import LoadedConfig, load_config, reload_config
from agent.config.quantize_check import warn_if_scheme_differs
from agent.errors import AdapterError, BundleError, ConfigError, MobizoError
from agent.io.control_socket import ControlServer
from agent.io.disk import DiskFaults, is_disk_fault_at
from agent.io.http import Client
from agent.io.registry import AdapterRegistry
from agent.io.store import InteractionStore
from agent.io.sysfs import IdleSource, SysfsSensors, idle_since
from agent.io.systemd import Notifier, configure_logging, watchdog_interval
from agent.services.daemon.artifact_journal import recover as recover_push
from agent.services.daemon.artifact_journal import recover_link
from agent.services.daemon.artifacts import artifact_service
from agent.services.daemon.control import control_server
from agent.services.daemon.debug_hooks import DebugHooks
from agent.services.daemon.fleet_side import FleetCommands
from agent.services.daemon.loop import Daemon, Ports
from agent.services.daemon.metrics import fleet_reading, metrics_server
from agent.services.daemon.run_context import ChildLauncher

log = logging.getLogger(__name__)

#: Seconds between attempts to start a fleet link whose files could not be opened.
FLEET_RETRY_S = 30.0


@dataclass
class AppOptions:
    """What the command line adds to the config file.

    Attributes:
        config_path: the TOML file (None: defaults and profile only).
        state_dir: overrides ``[paths].state_dir`` (kept across reloads).
        tick_s: seconds between main-loop ticks.
        daemon_settings: ``[daemon]`` values the command line forces (kept across reloads).
        debug_hooks: accept debug commands on the control socket (tests).
        profiles_dir: board profiles (default: the packaged firmware_configs/).
        configure_logging: set up logging from ``[logging]`` (off when the caller did).
    """

    config_path: Path | None = None
    state_dir: Path | None = None
    tick_s: float = 2.0
    daemon_settings: dict[str, float] = field(default_factory=dict)
    debug_hooks: bool = False
    profiles_dir: Path | None = None
    configure_logging: bool = True


class App:
    """Builds, starts and stops the agent.

    Args:
        options: command-line choices.
        notifier: sd_notify sender (default: from ``$NOTIFY_SOCKET``).
        clock: wall clock.
    """

    def __init__(self, options: AppOptions, *, notifier: Notifier | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.options = options
        self.notifier = notifier or Notifier()
        self.clock = clock
        self.stop_event = threading.Event()
        self.loaded: LoadedConfig | None = None
        self.store: InteractionStore | None = None
        self.registry: AdapterRegistry | None = None
        self.daemon: Daemon | None = None
        self.control: ControlServer | None = None
        self.fleet: Any = None
        self.debug = DebugHooks() if options.debug_hooks else None
        self._idle_source: IdleSource | None = None
        self._started: list[tuple[str, Callable[[], None]]] = []

    # ------------------------------------------------------------------ config
    def _forced(self) -> dict[str, Any]:
        """What the command line forces on top of the file and any runtime overrides."""
        forced: dict[str, Any] = {}
        if self.options.state_dir is not None:
            forced["paths"] = {"state_dir": str(Path(self.options.state_dir).resolve())}
        if self.options.daemon_settings:
            forced["daemon"] = dict(self.options.daemon_settings)
        return forced

    def load(self) -> LoadedConfig:
        """Load and validate the config (ConfigError lists every problem with its path)."""
        forced = self._forced()
        overrides_path = None
        if self.options.state_dir is not None:
            overrides_path = Path(self.options.state_dir) / "overrides.json"
        loaded = load_config(self.options.config_path, profiles_dir=self.options.profiles_dir,
                             overrides=forced or None, overrides_path=overrides_path,
                             replay_overrides=True)
        for warning in loaded.warnings:
            log.warning("%s", warning)
        self.loaded = loaded
        return loaded

    def _reload(self) -> tuple[LoadedConfig, set[str]]:
        assert self.loaded is not None
        fresh, changed = reload_config(self.loaded, self.options.config_path,
                                       profiles_dir=self.options.profiles_dir)
        return fresh, changed

    # ------------------------------------------------------------------ build
    def build(self) -> Daemon:
        """Open the store and registry and wire the daemon; READY may follow.

        Raises:
            ConfigError / BundleError / AdapterError: with what to do about it.
        """
        loaded = self.loaded or self.load()
        cfg = loaded.config
        if self.options.configure_logging:
            configure_logging(cfg.logging.level, cfg.logging.journal)
        state_dir = cfg.paths.state_dir
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"paths.state_dir {state_dir} cannot be created ({exc}); set it "
                              "to a writable directory or pass --state-dir") from exc
        # a push that activated something and never committed it is undone first: a bundle's
        # link before the registry opens (it validates against the bundle the link names)
        recover_link(state_dir)
        self.registry = self._open_registry(loaded)
        recover_push(state_dir, self.registry, self.clock)
        # one set of disk faults: the store's writer reports into what the status shows
        faults = DiskFaults(self.clock)
        self.store = InteractionStore(cfg.store_path, faults=faults)
        self._started.append(("store", self.store.close))
        service = Client.from_url(cfg.service.inference_url, timeout=cfg.service.request_timeout_s,
                                  token_file=cfg.inference.token_path(cfg.paths.state_dir))
        store = self.store

        def last_request() -> float | None:
            try:
                health = service.health()
            except (OSError, ValueError):
                # service down or restarting: the user cannot be using it; the store still
                # knows when it was last used
                return store.last_activity()
            if "last_request_at" not in health:
                # the public /health (our token unreadable or refused) hides the user's
                # activity: never take that for an idle user, ask the store instead
                return store.last_activity()
            value = health["last_request_at"]
            return None if value is None else float(value)

        self._idle_source = idle_since(last_request, self.clock)
        sensors = SysfsSensors.from_config(cfg, self._idle_source)
        systemd_run = None
        if cfg.training.memory_max_mb > 0:
            from agent.io.children.probe import usable_systemd_run
            from agent.io.children.process import limits_from_training

            systemd_run = usable_systemd_run(limits_from_training(cfg.training))
        self.daemon = Daemon(
            loaded, store=self.store, registry=self.registry,
            ports=Ports(sensors=sensors, service=service), notifier=self.notifier,
            tick_s=self.options.tick_s, clock=self.clock,
            launcher=ChildLauncher(systemd_run=systemd_run),
            watchdog_interval=watchdog_interval(), debug=self.debug, reload_fn=self._reload,
            reconfigure=self._reconfigure, on_state_change=self._state_changed,
            faults=faults,
        )
        return self.daemon

    def _open_registry(self, loaded: LoadedConfig) -> AdapterRegistry:
        from agent.io.adapter_fs import AdapterValidator

        cfg = loaded.config
        bundle = cfg.bundle_dir
        if not (bundle / "manifest.json").is_file():
            raise BundleError(
                f"no model bundle at {bundle} (service.bundle_dir): export one with "
                f"`mobizo-export --preset starter --out {bundle}` or point service.bundle_dir "
                "at an existing bundle")
        validator = AdapterValidator(bundle)
        warn_if_scheme_differs(loaded, log)  # issue 8: the profile's --quantize
        if cfg.adapters.registry_dir is not None and not cfg.registry_dir.is_dir():
            raise AdapterError(
                f"adapter registry {cfg.registry_dir} (adapters.registry_dir) does not exist; "
                "create the directory, fix the path, or remove the setting to use "
                f"{cfg.paths.state_dir / 'adapters'}")
        registry = AdapterRegistry(cfg.registry_dir, validator=validator,
                                   keep=cfg.adapters.versions_kept,
                                   stage_hook=self.debug.stage_hook if self.debug else None)
        try:
            registry.load_flat_b()  # the active adapter (or the bundle's) must be usable
        except AdapterError as exc:
            raise AdapterError(f"the active adapter in {cfg.registry_dir} is unusable: {exc}; "
                               "repair it with `mobizo-agent adapters rollback` or `adapters "
                               "activate VERSION`") from exc
        return registry

    def _reconfigure(self, fresh: LoadedConfig, changed: set[str]) -> Ports:
        """Redo what the changed sections configure (called on the main loop); the daemon's
        new ports."""
        assert self.daemon is not None
        self.loaded = fresh
        cfg = fresh.config
        ports = self.daemon.ports
        if changed & {"device", "constraints"}:
            ports = Ports(sensors=SysfsSensors.from_config(cfg, self._idle_source),
                          service=ports.service)
        if "logging" in changed and self.options.configure_logging:
            configure_logging(cfg.logging.level, cfg.logging.journal)
        if "adapters" in changed and self.registry is not None:
            self.registry.keep = max(1, cfg.adapters.versions_kept)
        if "service" in changed:
            ports = Ports(sensors=ports.sensors, service=Client.from_url(
                cfg.service.inference_url, timeout=cfg.service.request_timeout_s,
                token_file=cfg.inference.token_path(cfg.paths.state_dir)))
        if "mqtt" in changed:
            self._stop_fleet()
            self._start_fleet()
        return ports

    def _state_changed(self) -> None:
        if self.fleet is not None:
            try:
                self.fleet.state_changed()
            except Exception:  # noqa: BLE001 - the link must never break the loop
                log.debug("fleet state_changed failed", exc_info=True)

    # ------------------------------------------------------------------ services
    def _start_fleet(self) -> None:
        assert self.loaded is not None and self.daemon is not None
        mqtt = self.loaded.config.mqtt
        if not mqtt.enabled:
            return
        from agent.config.mqtt import default_device_id
        from agent.services.fleet.ha_discovery import bundle_model
        from agent.services.fleet.link import FleetLink

        assert self.store is not None
        commands = FleetCommands(self.daemon, self.store, forced=self._forced(),
                                 artifacts=artifact_service(self.daemon, self.registry,
                                                            self.store))
        device_id = mqtt.device_id or default_device_id()
        self.fleet = FleetLink(mqtt, device_id=device_id,
                               state_dir=self.loaded.config.paths.state_dir / "fleet",
                               handler=commands, state_source=commands,
                               config_sink=commands, clock=self.clock,
                               faults=self.daemon.faults,
                               device_model=bundle_model(self.loaded.config.bundle_dir))
        self.fleet.start()  # connects in the background; never blocks READY
        log.info("fleet link started for device %s", device_id)

    def _start_fleet_or_retry(self) -> None:
        """Start the fleet link; if its files cannot be opened (a full or read-only card),
        run without it and retry in the background: exiting here would crash-loop the unit."""
        try:
            self._start_fleet()
        except Exception as exc:
            assert self.loaded is not None and self.daemon is not None
            where = self.loaded.config.paths.state_dir / "fleet"
            if not is_disk_fault_at(exc, where):
                raise  # a broken [mqtt] section stops the daemon, as before
            message = self.daemon.faults.report("fleet", where, exc)  # shown in the status
            log.error("fleet link not started: %s; retrying every %.0f s", message,
                      FLEET_RETRY_S)
            threading.Thread(target=self._retry_fleet, name="fleet-retry", daemon=True).start()

    def _retry_fleet(self) -> None:
        while not self.stop_event.wait(FLEET_RETRY_S):
            try:
                self._start_fleet()
            except Exception as exc:  # noqa: BLE001 - keep trying
                log.debug("fleet link still cannot start: %s", exc)
                continue
            assert self.daemon is not None
            self.daemon.faults.clear("fleet")
            return

    def _stop_fleet(self) -> None:
        if self.fleet is not None:
            try:
                self.fleet.stop()
            except Exception:  # noqa: BLE001 - stopping must go on
                log.exception("fleet link did not stop cleanly")
            self.fleet = None

    def run(self) -> int:
        """Build, start, serve until the stop event, stop in reverse. Returns the exit code."""
        daemon = self.daemon or self.build()
        assert self.loaded is not None
        cfg = self.loaded.config
        self.control = control_server(daemon.command_table(), daemon.commands,
                                      cfg.paths.state_dir)
        try:
            self.control.start()
            self._started.append(("control", self.control.stop))
        except OSError as exc:
            if not is_disk_fault_at(exc, cfg.paths.state_dir):
                raise
            # a read-only card: no socket can be made there; run on (STATUS= and the fleet
            # still report), rather than exit into a crash loop
            log.error("no control socket: %s",
                      daemon.faults.report("control", cfg.paths.state_dir, exc))
        self._start_metrics(daemon)
        # READY now: config valid, store and registry open; the network comes later.
        self.notifier.ready(daemon.status.headline())
        self._start_fleet_or_retry()
        self._started.append(("fleet", self._stop_fleet))
        log.info("mobizo-agent running (pid %d, state %s)", os.getpid(), cfg.paths.state_dir)
        try:
            daemon.run_forever(self.stop_event)
        finally:
            self.close()
        return 0

    def _start_metrics(self, daemon: Daemon) -> None:
        """Serve ``/metrics`` when ``[daemon] metrics_listen`` asks; a listener that cannot
        start is logged, never fatal: monitoring must not stop training."""
        assert self.loaded is not None and daemon.metrics.view is not None
        daemon.metrics.view.fleet = lambda: fleet_reading(self.fleet)
        try:
            server = metrics_server(self.loaded.config, daemon.metrics)
            if server is not None:
                server.start()
                self._started.append(("metrics", server.stop))
        except (OSError, MobizoError) as exc:
            log.error("no metrics listener on %s: %s", self.loaded.config.daemon.metrics_listen,
                      exc)

    def close(self) -> None:
        """Stop every started service, newest first."""
        while self._started:
            name, stop = self._started.pop()
            try:
                stop()
            except Exception:  # noqa: BLE001 - keep stopping the rest
                log.exception("stopping %s failed", name)
        self.notifier.close()

    def request_stop(self) -> None:
        """SIGTERM/SIGINT: end the loop (the burst checkpoints first)."""
        self.stop_event.set()
        if self.daemon is not None:
            self.daemon.wake.set()


__all__ = ["App", "AppOptions"]
