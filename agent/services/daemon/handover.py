"""Hand a freshly published adapter to the running inference service and check it took it.

``POST /v1/admin/reload-adapter`` makes the service re-read the registry's active pointer;
``GET /health`` then shows which version it serves. A 409 or a version that does not show up
within the timeout is a refusal, and the daemon rolls the registry back. A service that
cannot be reached is not a refusal: it is down or restarting, and its pointer watcher loads
the active version when it comes back (the registry is the source of truth).
"""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger(__name__)


def hand_over(service: Any, version: str, verify_s: float, poll_s: float = 0.1) -> str | None:
    """Ask ``service`` (an :class:`agent.io.http.Client`) to serve ``version``.

    Returns:
        None when it serves ``version`` (or cannot be reached); otherwise why it refused.
    """
    try:
        reply = service.reload_adapter()
    except OSError as exc:
        log.warning("inference service not reachable (%s); it will load %s from the "
                    "registry when it runs", exc, version)
        return None
    if reply.status == 409:
        try:
            return str(reply.json.get("error") or "refused")
        except ValueError:
            return "refused"
    deadline = time.monotonic() + verify_s
    last = None
    while time.monotonic() < deadline:
        try:
            adapter = service.health().get("adapter") or {}
        except (OSError, ValueError):
            return None
        last, error = adapter.get("version"), adapter.get("last_error")
        if last == version:
            return None
        if error and version in str(error):
            return str(error)
        time.sleep(poll_s)
    return f"still serving {last} after {verify_s:.0f} s"
