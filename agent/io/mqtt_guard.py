"""What bounds the inbound side of the MQTT transport: size, rate and memory.

Anyone allowed to publish on a device's topics could otherwise make it hold a 50 MiB payload
per message, queue a flood while the worker is busy, or keep one topic hot. The network thread
applies these before a message becomes an event (:mod:`agent.io.mqtt`), so nothing here
parses a payload: an oversized one is dropped unread, a flood is cut per topic, and the queue
between the network thread and the worker holds a bounded number of bytes.
"""

from __future__ import annotations

import ipaddress
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any


def is_loopback_host(host: str) -> bool:
    """True when ``host`` names this machine's loopback (lexically: no DNS lookup).

    ``localhost`` and any loopback address (``127.0.0.0/8``, ``::1``) count; a name that
    merely resolves to one does not, so the answer never depends on the resolver.
    """
    name = host.strip().strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class ByteBoundedQueue(queue.Queue[Any]):
    """A queue bounded in items *and* in payload bytes (``size_of(item)`` each).

    Args:
        maxsize: most items (0: unbounded in items).
        max_bytes: most bytes held; a put that would exceed it raises :class:`queue.Full`
            (an item of 0 bytes, such as a control event, is always accepted if there is room
            in items).
        size_of: bytes an item holds.
    """

    def __init__(self, maxsize: int, max_bytes: int, size_of: Callable[[Any], int]) -> None:
        super().__init__(maxsize)
        self.max_bytes = max_bytes
        self._size_of = size_of
        self._bytes = 0

    @property
    def bytes_held(self) -> int:
        """Bytes of the items waiting now."""
        with self.mutex:
            return self._bytes

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        size = self._size_of(item)
        with self.mutex:
            if size and self._bytes + size > self.max_bytes:
                raise queue.Full
            self._bytes += size  # reserved before the put so two producers cannot both fit
        try:
            super().put(item, block, timeout)
        except queue.Full:
            with self.mutex:
                self._bytes -= size
            raise

    def _get(self) -> Any:
        # Called by Queue.get with the mutex held.
        item = super()._get()
        self._bytes -= self._size_of(item)
        return item


class TopicRateLimiter:
    """A token bucket per topic: ``burst`` messages at once, then ``rate_per_s`` sustained.

    The network thread is its only caller; the lock only makes it safe to read counters from
    elsewhere. At most ``max_topics`` buckets are kept (least recently used go first), so a
    sender cycling through topic names cannot grow it.

    Args:
        rate_per_s: sustained messages per second per topic.
        burst: bucket size.
        clock: monotonic seconds.
        max_topics: buckets kept.
    """

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_topics: int = 1024,
    ) -> None:
        self.rate_per_s = rate_per_s
        self.burst = float(burst)
        self._clock = clock
        self._max_topics = max_topics
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()
        self.dropped = 0

    def allow(self, topic: str) -> bool:
        """Take one token for ``topic``; False (and counted) when its bucket is empty."""
        now = self._clock()
        with self._lock:
            tokens, at = self._buckets.pop(topic, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate_per_s)
            ok = tokens >= 1.0
            self._buckets[topic] = (tokens - 1.0 if ok else tokens, now)
            while len(self._buckets) > self._max_topics:
                self._buckets.popitem(last=False)
            if not ok:
                self.dropped += 1
            return ok
