"""``mobizo-bench serve`` on the starter bundle, small: greedy parity by token ids (not text)
and adapter switches under load, every switch in the p99."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.bench import serve


@pytest.mark.runtime
def test_serve_bench_compares_token_ids_and_times_every_switch(starter_bundle: Path) -> None:
    r = serve.run(starter_bundle, prompt_tokens=16, gen_tokens=8, repeats=1, switches=4,
                  threads=2)
    parity = r["parity"]
    # 8 generated ids on each side: counted as ids, whatever text they decode to
    assert parity["of"] == 8
    assert parity["identical"] == (parity["greedy_prefix_agreement"] == 8)
    sw = r["switch"]
    assert sw["switches"] == 4 and sw["failed_requests"] == 0
    # the union's p99 is not bounded by either part's p99 at n=4 (interpolation): only sanity
    assert sw["all_p99_ms"] > 0 and sw["control_p99_ms"] > 0
    assert "greedy token ids identical" in serve.format_table(r)
