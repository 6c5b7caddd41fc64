"""Following a bundle switch: when ``bundle_dir`` is a link and its target changes, the
service serves the new bundle (program, tokenizer, manifest, adapter registry) in place.

``mobizo-fleet push-bundle`` switches the link ``<state dir>/bundles/current`` atomically
(agent/services/daemon/artifact_activate.py), and a rollback, or the daemon's recovery at
start after a kill, switches it back the same way. The service notices by itself:
:class:`BundleLinkWatcher` resolves the link every ``interval_s`` (one ``realpath``, as the
adapter watcher's one ``stat``). Noticing, rather than being told, is the robust choice here:
the daemon's recovery runs before its HTTP client exists, an operator may switch the link by
hand, and a told switch is lost if the service was restarting at that moment; the link is
the one truth both processes read.

A switch must not break requests. :class:`ServingGate` lets generation requests through
while no switch runs; a switch closes it to new requests, waits for the ones in flight (they
were tokenized for the old bundle, and finish on the old program), then swaps, then opens
it again; a request that arrived meanwhile waits (up to its timeout) and is answered by the
new bundle.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)


class GateTimeout(TimeoutError):
    """A request waited longer than its timeout for a bundle switch to end."""


class ServingGate:
    """Many requests at once, or one bundle switch; a waiting switch goes first."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._switching = False

    @contextmanager
    def serving(self, timeout_s: float) -> Iterator[None]:
        """Held for a whole generation request (tokenizing to the last byte sent).

        Raises:
            GateTimeout: a switch held the gate longer than ``timeout_s``.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: not self._switching, timeout_s):
                raise GateTimeout(f"the service is switching bundles (over {timeout_s:.0f} s)")
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Held for a switch: no new request starts, and every one in flight has ended.

        The wait for requests in flight has no bound of its own: each is bounded by its own
        timeouts (``request_timeout_s`` per event, ``write_timeout_s`` per write), and ending
        the wait early would run requests tokenized for the old bundle on the new program.
        """
        with self._cond:
            self._cond.wait_for(lambda: not self._switching)
            self._switching = True
            self._cond.wait_for(lambda: self._active == 0)
        try:
            yield
        finally:
            with self._cond:
                self._switching = False
                self._cond.notify_all()


def resolved(path: Path) -> Path:
    """Where ``path`` leads now (itself when it is not a link)."""
    return Path(os.path.realpath(path))


class BundleLinkWatcher:
    """Resolves ``link`` every ``interval_s`` and calls ``on_change(target)`` when it moves.

    Args:
        link: ``bundle_dir`` as configured (a link, or a directory: then nothing ever moves).
        served: the directory the service serves now (what "moved" is measured against).
        on_change: switches the service to the new target; its exceptions are logged.
    """

    def __init__(self, link: Path, served: Callable[[], Path],
                 on_change: Callable[[Path], None], interval_s: float = 0.25) -> None:
        self.link = link
        self._served = served
        self._on_change = on_change
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bundle-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _loop(self) -> None:
        failed: Path | None = None  # a target that failed to load is not retried every poll
        while not self._stop.wait(self.interval_s):
            target = resolved(self.link)
            if target == self._served():
                failed = None
                continue
            if target == failed:
                continue
            try:
                self._on_change(target)
                failed = None
            except Exception:  # never let the watcher die; the old bundle keeps serving
                log.exception("could not switch to bundle %s; the old one keeps serving",
                              target)
                failed = target
