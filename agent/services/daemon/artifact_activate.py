"""Activating a pushed artifact, and undoing it: the adapter registry or the bundle link.

An **adapter** goes through the registry's staged publish (copy, fsync, rename) and its
atomic ``active`` pointer, which the inference service watches and hot-swaps; its manifest
records the push (``metrics.artifact_id``) so a recovery can tell it from a trained one. A
rollback points ``active`` back at what served before and deletes the pushed version.

A **bundle** is renamed into ``<state dir>/bundles/<bundle id>/`` and the link
``<state dir>/bundles/current`` (what ``[service] bundle_dir`` must name) is switched by
symlink-to-temp + rename, so it names the old or the new bundle, never neither. A rollback
switches it back and deletes the new directory. The inference service follows the link by
itself (agent/services/inference/bundle_switch.py). Adapters trained for the old bundle do not
fit the new one: before the switch the registry's ``active`` goes to ``initial`` (the bundle's
own adapter, whichever bundle the link names), after it the registry validates against the
new bundle (:func:`revalidate`); a rollback undoes both (:func:`restore_adapter`).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from agent.core.adapters import INITIAL_VERSION
from agent.errors import AdapterError
from agent.io.adapter_fs import AdapterValidator
from agent.io.atomic import fsync_dir, replace_dir
from agent.io.registry import AdapterRegistry

log = logging.getLogger(__name__)

BUNDLES_DIR = "bundles"
CURRENT_LINK = "current"
#: Where a pushed adapter's registry manifest names its push.
ARTIFACT_KEY = "artifact_id"


def bundle_link(state_dir: Path) -> Path:
    """The link ``[service] bundle_dir`` must name for ``push-bundle`` to switch bundles."""
    return Path(state_dir) / BUNDLES_DIR / CURRENT_LINK


# --- adapters ----------------------------------------------------------------------------


def activate_adapter(registry: AdapterRegistry, files: Path, artifact_id: str) -> str:
    """Publish and activate the staged adapter; returns its new version."""
    return registry.publish(files, metrics={ARTIFACT_KEY: artifact_id, "pushed": True},
                            activate=True)


def pushed_by(registry: AdapterRegistry, version: str, artifact_id: str) -> bool:
    """Whether ``version`` is the adapter that push ``artifact_id`` stored."""
    if version == INITIAL_VERSION or version not in registry.versions():
        return False
    try:
        return registry.manifest(version).metrics.get(ARTIFACT_KEY) == artifact_id
    except AdapterError:
        return False


def rollback_adapter(registry: AdapterRegistry, previous: str, artifact_id: str) -> str | None:
    """Serve ``previous`` again and delete what push ``artifact_id`` stored.

    Returns:
        The version that was undone (None: nothing of the push was there).
    """
    undone = [v for v in registry.versions() if pushed_by(registry, v, artifact_id)]
    if undone:
        registry.forget(undone, activate=previous)
    if (registry.active() or INITIAL_VERSION) != previous:
        registry.activate(previous)
    if undone:
        log.warning("rolled back pushed adapter %s; %s serves again", ", ".join(undone),
                    previous)
    return undone[-1] if undone else None


# --- bundles -----------------------------------------------------------------------------


def current_bundle(link: Path) -> str | None:
    """The directory name the bundle link points at (None: no link)."""
    try:
        return os.readlink(link)
    except OSError:
        return None


def switch_link(link: Path, target: str) -> None:
    """Point ``link`` at ``target`` (a name beside it) atomically and durably."""
    tmp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)
    fsync_dir(link.parent)


def activate_bundle(link: Path, files: Path, bundle_id: str) -> str:
    """Move the staged bundle beside the link and switch the link to it; returns its name."""
    name = bundle_id
    replace_dir(files, link.parent / name)
    switch_link(link, name)
    log.info("bundle link %s now names %s", link, name)
    return name


def revalidate(registry: AdapterRegistry, link: Path) -> None:
    """Validate adapters against the bundle ``link`` names now (it was just switched)."""
    registry.validator = AdapterValidator(link)


def restore_adapter(registry: AdapterRegistry, previous: str | None) -> bool:
    """After a bundle rollback: activate ``previous`` again (the registry validates against
    the old bundle); True when the pointer moved."""
    if previous is None or (registry.active() or INITIAL_VERSION) == previous:
        return False
    registry.activate(previous)
    log.warning("adapter %s serves again with the bundle it was trained for", previous)
    return True


def rollback_bundle(link: Path, previous: str | None, new: str | None) -> None:
    """Switch the link back to ``previous`` and delete ``new`` (when it is not previous)."""
    if previous is not None and current_bundle(link) != previous:
        switch_link(link, previous)
    if new is not None and new != previous and (link.parent / new).is_dir():
        shutil.rmtree(link.parent / new, ignore_errors=True)
    log.warning("rolled back pushed bundle %s; %s serves again", new, previous)
