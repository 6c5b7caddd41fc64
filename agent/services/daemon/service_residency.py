"""The daemon's side of one copy of the weights: release the service's program for a burst,
load it again once the board is quiet.

A burst runs only while the user is idle, so the daemon asks the inference service to let its
program go before the trainer starts (``[service] release_program_during_bursts``; the
service's engine process exits, agent/services/inference/residency.py). When neither a
trainer, an evaluator nor a federated round runs any more, the daemon asks the service to load
it again, so the user's first request after a burst finds a warm engine instead of paying its
start (about 3.5 s on the 110M shape). The request that arrives *during* a burst still loads
it (and stops the burst), as before.

The load is asked from a thread of its own: loading takes longer than the daemon's tick (and
may take longer than the client's timeout on a slow board, in which case the service simply
finishes it); the main loop never waits for it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from agent.services.daemon.ports import ServiceLink

log = logging.getLogger(__name__)


class ServiceResidency:
    """Whether the daemon has the service's program released, and the calls that change it.

    Args:
        service: the service's admin API (None: no service configured).
        enabled: ``[service] release_program_during_bursts`` (read at each call).
    """

    def __init__(self, service: Callable[[], ServiceLink | None],
                 enabled: Callable[[], bool]) -> None:
        self._service = service
        self._enabled = enabled
        self.released = False  # released by us and not yet asked back
        self.restores = 0
        self._thread: threading.Thread | None = None

    def release(self) -> str | None:
        """A burst starts: ask the service to release its program; a note if it did not."""
        service = self._service()
        if service is None or not self._enabled():
            return None
        try:
            reply = service.set_program_resident(False)
        except OSError as exc:  # not running: nothing resident to release
            return f"the inference service did not answer ({exc})"
        if reply.status != 200:
            return f"the inference service answered {reply.status}"
        self.released = True
        return None

    def restore_if_quiet(self, busy: bool) -> bool:
        """Ask the service to load its program again once nothing heavy runs (``busy``:
        a trainer, an evaluator or a federated round); whether it was asked now."""
        if not self.released or busy:
            return False
        service = self._service()
        self.released = False
        if service is None:
            return False
        self.restores += 1
        self._thread = threading.Thread(target=self._load, args=(service,),
                                        name="service-restore", daemon=True)
        self._thread.start()
        return True

    def wait(self, timeout_s: float) -> None:
        """Wait for the load asked last (tests, shutdown)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout_s)

    @staticmethod
    def _load(service: ServiceLink) -> None:
        try:
            reply = service.set_program_resident(True)
        except OSError as exc:  # down, or still loading past the client's timeout
            log.info("asked the inference service to load its program again after the "
                     "burst; no answer yet (%s): the next request loads it if it did not", exc)
            return
        if reply.status == 200:
            log.info("the inference service loaded its program again after the burst")
        else:
            log.warning("the inference service answered %s when asked to load its program "
                        "again; the next request loads it", reply.status)
