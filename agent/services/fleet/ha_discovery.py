"""Home Assistant MQTT discovery on the fleet link: announce on connect, clear when turned off.

On each connect (after the state and the birth) the link calls :meth:`HaDiscovery.announce`:
with ``[mqtt.home_assistant] enabled`` it publishes the retained configs built by
:mod:`agent.core.ha_discovery`; configs this device announced earlier and no longer wants
(the feature turned off by a SIGHUP reload, another discovery prefix) are cleared with an
empty retained payload, which makes Home Assistant remove those entities.

What was announced is remembered in ``fleet.db`` (``ha_discovery_topics``), written *before*
the configs go out, so a crash in between never leaves a config this device forgets to clear.
Nothing is cleared when the link merely stops: the entities then show "unavailable" through
the ``available`` topic, which is what Home Assistant expects of a device that is off.
Button presses need nothing here: they are ordinary commands on the device's own ``cmd/``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from agent import __version__
from agent.config.home_assistant import HomeAssistantConfig
from agent.core.ha_discovery import DiscoveryConfig, HaDevice, discovery_configs, node_id
from agent.errors import MobizoError
from agent.io.bundle_files import read_manifest
from agent.io.fleet_store import FleetStore
from agent.services.fleet.session import FleetSession

log = logging.getLogger(__name__)

#: fleet.db key: the discovery topics this device has announced and not yet cleared.
ANNOUNCED_KEY = "ha_discovery_topics"


def bundle_model(bundle_dir: Path) -> str:
    """The model name Home Assistant shows: the bundle's source, family and quantization.

    Never raises: a bundle that cannot be read is shown as such (the daemon reports why
    elsewhere).
    """
    try:
        manifest = read_manifest(bundle_dir)
    except (MobizoError, OSError, ValueError):
        return "mobizo bundle (unreadable)"
    source = Path(manifest.base.source).name or manifest.base.source
    return f"{source} ({manifest.model.family}, {manifest.quantize})"[:100]


class HaDiscovery:
    """Announces (or clears) this device's Home Assistant discovery configs.

    Args:
        config: the ``[mqtt.home_assistant]`` section.
        session: the link's session (transport, topics, device id).
        store: where the announced topics persist.
        model: the model shown in Home Assistant (:func:`bundle_model`); None: unknown.
        qos: QoS of the configs (``[mqtt] qos``).
    """

    def __init__(
        self,
        config: HomeAssistantConfig,
        *,
        session: FleetSession,
        store: FleetStore,
        model: str | None,
        qos: int,
    ) -> None:
        self.config = config
        self.session = session
        self.store = store
        self.qos = qos
        device_id = session.device_id
        self.device = HaDevice(
            device_id=device_id,
            name=config.device_name or f"mobizo {device_id}",
            model=model or "mobizo-agent",
            sw_version=__version__,
        )
        if config.enabled and node_id(device_id) != device_id:
            log.warning(
                "Home Assistant discovery: device id %r has characters Home Assistant refuses "
                "in a node id; announcing it as %r, which the shipped broker ACL pattern "
                "(homeassistant/+/%%u/+/config) does not match: set [mqtt] device_id to letters, "
                "digits, '_' and '-' only, or add an ACL line for it",
                device_id, node_id(device_id),
            )

    def wanted(self) -> list[DiscoveryConfig]:
        """The configs this device should have out now (none when the feature is off)."""
        if not self.config.enabled:
            return []
        return discovery_configs(self.config.discovery_prefix, self.session.topics, self.device)

    def announced(self) -> set[str]:
        """Discovery topics announced earlier and not known to be cleared."""
        try:
            value = self.store.get_json(ANNOUNCED_KEY)
        except Exception:  # noqa: BLE001 - a bad or locked fleet.db: nothing known to clear
            log.warning("fleet.db: cannot read %s", ANNOUNCED_KEY, exc_info=True)
            return set()
        return {t for t in value if isinstance(t, str)} if isinstance(value, list) else set()

    def _remember(self, topics: set[str]) -> bool:
        try:
            self.store.put_json(ANNOUNCED_KEY, sorted(topics))
        except Exception as exc:  # noqa: BLE001 - the link keeps serving; retried next connect
            log.warning("fleet.db: cannot record the Home Assistant discovery topics (%s)", exc)
            return False
        return True

    def announce(self) -> None:
        """Publish the wanted configs and clear the stale ones (on each connect; worker thread).

        A publish that fails (the connection dropped meanwhile) leaves the record as it is:
        the next connect does it again.
        """
        wanted = self.wanted()
        previous = self.announced()
        wanted_topics = {c.topic for c in wanted}
        if not wanted and not previous:
            return
        # Remember first: a config out on the broker is always one this device will clear.
        if not wanted_topics <= previous and not self._remember(previous | wanted_topics):
            return
        transport = self.session.transport
        ok = True
        for topic in sorted(previous - wanted_topics):
            ok = transport.publish(topic, b"", qos=self.qos, retain=True) is not None and ok
        for config in wanted:
            ok = transport.publish(config.topic, config.payload_bytes(), qos=self.qos,
                                   retain=True) is not None and ok
        if not ok:
            return
        if previous != wanted_topics:
            self._remember(wanted_topics)
        if wanted:
            log.info("Home Assistant discovery: announced %d entities under %s",
                     len(wanted), self.config.discovery_prefix)
        elif previous:
            log.info("Home Assistant discovery: cleared %d entities", len(previous))
