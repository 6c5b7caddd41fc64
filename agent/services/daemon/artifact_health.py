"""The health window after a push is activated: the service must answer and serve it.

For ``health_window_s`` seconds the daemon polls the inference service's ``/health`` (with
its token, so the reply names the adapter it serves). An adapter is healthy when every poll
answers and shows the pushed version with no load error; a bundle when every poll shows the
pushed bundle id and one probe generation (``/v1/chat/completions``, one token) succeeds. The
first poll that fails ends the window: the push is rolled back, and the reason is the job's.
A service that cannot be reached is unhealthy here (unlike after a training publish): a push
is committed only on evidence that it serves.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from agent.errors import MobizoError


class Unhealthy(MobizoError):
    """The pushed artifact failed its health window (the message says what was seen)."""


class HealthService(Protocol):
    """What the window asks the inference service (:class:`agent.io.http.Client`)."""

    def health(self) -> Any: ...


@dataclass
class HealthWindow:
    """Watches the service for ``window_s`` seconds.

    Attributes:
        service: the inference service client (None: no service configured: unhealthy).
        window_s: how long the artifact must stay healthy.
        poll_s: seconds between polls.
        should_stop: ends the window early (the job was canceled): unhealthy.
        switch_s: how long a bundle push waits for the service to load the new bundle
            before its window starts.
    """

    service: HealthService | None
    window_s: float
    poll_s: float = 0.5
    should_stop: Callable[[], bool] = lambda: False
    switch_s: float = 120.0
    monotonic: Callable[[], float] = field(default=time.monotonic)
    sleep: Callable[[float], None] = field(default=time.sleep)

    def _health(self) -> dict[str, Any]:
        if self.service is None:
            raise Unhealthy("no inference service is configured to serve it")
        try:
            health = self.service.health()
        except (OSError, ValueError) as exc:
            raise Unhealthy(f"the inference service did not answer /health ({exc})") from exc
        if not isinstance(health, dict):
            raise Unhealthy("the inference service's /health is not a JSON object")
        return health

    def _watch(self, check: Callable[[dict[str, Any]], None]) -> int:
        polls = 0
        end = self.monotonic() + self.window_s
        while True:
            check(self._health())
            polls += 1
            if self.monotonic() >= end:
                return polls
            if self.should_stop():
                raise Unhealthy("the push was canceled during its health window")
            self.sleep(min(self.poll_s, max(0.0, end - self.monotonic())))

    def adapter(self, version: str) -> str:
        """Watch an adapter push; a line saying what was seen, or Unhealthy."""

        def check(health: dict[str, Any]) -> None:
            adapter = health.get("adapter")
            if not isinstance(adapter, dict):
                raise Unhealthy("/health does not say which adapter serves (the daemon could "
                                "not read the service's token?)")
            if adapter.get("last_error") and version in str(adapter["last_error"]):
                raise Unhealthy(f"the service could not load {version}: "
                                f"{str(adapter['last_error'])[:200]}")
            if adapter.get("version") != version:
                raise Unhealthy(f"the service serves {adapter.get('version')}, not {version}")

        polls = self._watch(check)
        return f"served {version} for {self.window_s:.0f} s ({polls} health checks)"

    def _await_bundle(self, bundle_id: str) -> None:
        """Wait (up to ``switch_s``) for the service to load the bundle the link names now:
        it notices the link within its watch interval, then loads the new program."""
        end = self.monotonic() + self.switch_s
        while True:
            health = self._health()
            if health.get("bundle_id") == bundle_id:
                return
            # the service names the directory it failed on: <state>/bundles/<bundle id>
            error = str((health.get("bundle") or {}).get("last_error") or "")
            if f"/{bundle_id}: " in error:
                raise Unhealthy(f"the service could not load bundle {bundle_id}: "
                                f"{str(error)[:300]}")
            if self.monotonic() >= end or self.should_stop():
                raise Unhealthy(f"the service still runs bundle {health.get('bundle_id')}, "
                                f"not {bundle_id}, after {self.switch_s:.0f} s (an older "
                                "service that does not follow its bundle link must be "
                                "restarted on a bundle switch)")
            self.sleep(self.poll_s)

    def bundle(self, bundle_id: str) -> str:
        """Watch a bundle push: the service loads and reports it, and a probe generation
        answers."""

        def check(health: dict[str, Any]) -> None:
            if health.get("bundle_id") != bundle_id:
                raise Unhealthy(f"the service runs bundle {health.get('bundle_id')}, not "
                                f"{bundle_id}")

        self._await_bundle(bundle_id)
        # the probe generation: a client without chat (not the HTTP one) cannot prove it
        chat = getattr(self.service, "chat", None)
        if chat is None:
            raise Unhealthy("no probe generation possible through this service client")
        try:
            reply = chat("ping", max_tokens=1)
        except OSError as exc:
            raise Unhealthy(f"the probe generation failed ({exc})") from exc
        status = getattr(reply, "status", 200)
        if status != 200:
            raise Unhealthy(f"the probe generation answered {status}")
        polls = self._watch(check)
        return f"served bundle {bundle_id} for {self.window_s:.0f} s ({polls} checks, probe ok)"
