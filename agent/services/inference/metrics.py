"""The inference service's Prometheus metrics (``GET /metrics``, text exposition format).

Thin on purpose: counters and histograms move where the routes already know the numbers
(:mod:`agent.services.inference.server`: a request's endpoint and status, a generation's
tokens and timings, a refusal); the queue depth and the served adapter are read at the
scrape. Each service has its own :class:`~prometheus_client.CollectorRegistry`, never the
process-global one, so several services in one process (the tests) never collide.

Latency buckets are sized for a Raspberry Pi class board running a 0.5-1 B model on CPU:
a first token in 0.1 s to tens of seconds (a long prompt's prefill), a decode step of 20 ms
to a few seconds. The names are in ``docs/metrics.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.io.metrics_http import PROMETHEUS_TEXT

if TYPE_CHECKING:
    from agent.services.inference.generation import GenerationResult

#: Time to first token (s): queue wait + prefill. A Pi 5 prefills ~100 tokens a second.
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
#: Time per output token (s), a request's decode time over its tokens: 1-50 tokens a second.
TPOT_BUCKETS = (0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0)

SwitchHook = Callable[[str, Path, str], None]


class ServiceMetrics:
    """The service's metrics, in a registry of its own.

    Args:
        queue_depth: requests queued or generating now (read at each scrape).
        adapter_version: the adapter version served now (read at each scrape).
    """

    def __init__(self, *, queue_depth: Callable[[], int],
                 adapter_version: Callable[[], str]) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "mobizo_inference_requests", "HTTP requests answered, by route and status code",
            ["endpoint", "status"], registry=r)
        self.rejected = Counter(
            "mobizo_inference_rejected",
            "Requests refused for capacity: queue_full (503), rate_limited (429)",
            ["reason"], registry=r)
        self.prompt_tokens = Counter(
            "mobizo_inference_prompt_tokens", "Prompt tokens of finished generations",
            registry=r)
        self.cached_prompt_tokens = Counter(
            "mobizo_inference_prompt_cached_tokens",
            "Prompt tokens whose KV state the prompt cache already held", registry=r)
        self.generated_tokens = Counter(
            "mobizo_inference_generated_tokens", "Tokens generated", registry=r)
        self.ttft = Histogram(
            "mobizo_inference_time_to_first_token_seconds",
            "From queueing a request to its first token (queue wait + prefill)",
            buckets=TTFT_BUCKETS, registry=r)
        self.tpot = Histogram(
            "mobizo_inference_time_per_output_token_seconds",
            "A request's decode time over its generated tokens (one observation a request)",
            buckets=TPOT_BUCKETS, registry=r)
        self.swaps = Counter(
            "mobizo_inference_adapter_swaps", "Adapter switches without a restart", registry=r)
        Gauge("mobizo_inference_queue_depth", "Requests queued or generating",
              registry=r).set_function(lambda: float(queue_depth()))
        r.register(_AdapterInfo(adapter_version))

    def request(self, endpoint: str, status: int) -> None:
        """One answered request (``endpoint``: a route, or ``other``)."""
        self.requests.labels(endpoint, str(status)).inc()

    def refused(self, reason: str) -> None:
        """A request refused for capacity (``queue_full``, ``rate_limited``)."""
        self.rejected.labels(reason).inc()

    def generated(self, result: GenerationResult, latency_s: float) -> None:
        """A finished generation; ``latency_s``: from queueing to its end."""
        self.prompt_tokens.inc(result.prompt_tokens)
        self.cached_prompt_tokens.inc(result.cached_tokens)
        self.generated_tokens.inc(result.completion_tokens)
        self.ttft.observe(max(0.0, latency_s - result.decode_s))
        if result.completion_tokens > 0:
            self.tpot.observe(result.decode_s / result.completion_tokens)

    def counting_swaps(self, hook: SwitchHook | None) -> SwitchHook:
        """``hook`` (the adapter slot's after-switch call), counting each switch first."""
        def switched(version: str, path: Path, bundle_id: str) -> None:
            self.swaps.inc()
            if hook is not None:
                hook(version, path, bundle_id)
        return switched

    def render(self) -> tuple[bytes, str]:
        """The text exposition of every metric and its Content-Type."""
        return generate_latest(self.registry), PROMETHEUS_TEXT


class _AdapterInfo(Collector):
    """``mobizo_inference_adapter_info{version} 1``: the served adapter, read at the scrape."""

    def __init__(self, version: Callable[[], str]) -> None:
        self.version = version

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("mobizo_inference_adapter_info",
                                 "The adapter version served now (value always 1)",
                                 labels=["version"])
        info.add_metric([self.version()], 1.0)
        yield info
