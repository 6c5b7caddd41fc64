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


@pytest.mark.runtime
def test_http_speeds_time_prefills_and_ttft_sends_the_reply_back(
        starter_bundle: Path, tmp_path: Path) -> None:
    """The ``--vs-llamacpp`` HTTP measurements on a real service: distinct prompts (no cache
    hit beyond a shared BOS), and a follow-up turn that carries the service's own reply."""
    from agent.bench.serve_common import bench_prompt, http_speeds
    from agent.bench.serve_vs_llamacpp import conversation, follow_up, service_ttft
    from agent.io.http import Client
    from agent.services.inference.prompt_cache import common_prefix_len
    from agent.services.inference.service import InferenceService, ServeConfig

    svc = InferenceService(starter_bundle, tmp_path / "state",
                           ServeConfig(listen="127.0.0.1:0"))
    prompts = [bench_prompt(svc, 16, k)[0] for k in range(9)]  # one per word of the sentence
    assert all(len(ids) == 16 for ids in prompts)
    for k, a in enumerate(prompts):  # no two share more than a BOS
        assert all(common_prefix_len(a, b) <= 1 for b in prompts[k + 1:])
    svc.start()
    try:
        assert svc.address is not None
        client = Client(*svc.address, token=svc.token)
        speeds = http_speeds(client, 16, 4, 2, svc)
        assert speeds["max_cached_tokens"] <= 1 and speeds["prompt_tok_s"] > 0
        assert speeds["outside_program_ms_per_request"] >= 0 and "load_avg_1m" in speeds
        messages = conversation(2, 60)  # user, assistant, user: fits the starter's context
        ttft = service_ttft(client, messages, reply_tokens=4, repeats=1)
        history = svc.codec.encode_chat(messages[:-2])
        assert ttft["reused_tokens"] >= len(history)  # the whole turn before, and more
        assert ttft["cold_s"] > 0 and ttft["follow_up_s"] > 0
        assert follow_up(messages, "reply")[-2:] == [
            {"role": "assistant", "content": "reply"}, messages[-1]]
    finally:
        svc.stop()
