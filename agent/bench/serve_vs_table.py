"""The side-by-side table and the issue 18 targets of ``mobizo-bench serve --vs-llamacpp``.

Pure formatting over the JSON-able results of ``agent.bench.serve_vs_llamacpp.run``: one
row per engine × precision, then parity, host overhead and adapter-switch lines, then each
target with PASS / FAIL. Ratios are ours ÷ llama.cpp **with the same LoRA** (the same work:
both engines apply the adapter unmerged); llama.cpp without it is shown beside.
"""

from __future__ import annotations

from typing import Any

PRECISION = {"none": "fp32", "8da8w": "int8", "8da4w": "int4"}


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def targets(results: dict[str, Any]) -> dict[str, bool]:
    """Issue 18's targets, one boolean per (target, scheme)."""
    out: dict[str, bool] = {}
    for scheme, r in results["schemes"].items():
        ours, theirs = r["http"], r["llama_cpp"]["lora"]
        out[f"{scheme}: decode >= llama.cpp {r['gguf']}+LoRA"] = (
            ours["gen_tok_s"] >= theirs["gen_tok_s"])
        out[f"{scheme}: prompt >= 0.8 x llama.cpp {r['gguf']}+LoRA"] = (
            ours["prompt_tok_s"] >= 0.8 * theirs["prompt_tok_s"])
        ttft = ours["ttft"]
        out[f"{scheme}: follow-up TTFT <= 0.3 x cold"] = (
            ttft["follow_up_s"] <= 0.3 * ttft["cold_s"])
        out[f"{scheme}: host overhead <= 5 % of a decode step"] = (
            r["in_process"]["host_overhead_pct"] <= 5.0)
        sw = r["switch"]
        out[f"{scheme}: switch p99 < 50 ms over >= 40 switches, 0 failed"] = (
            sw["all_p99_ms"] < 50 and sw["switches"] >= 40 and sw["failed_requests"] == 0)
    return out


def _rows(scheme: str, r: dict[str, Any]) -> list[str]:
    prec, kind = PRECISION.get(scheme, scheme), r["gguf"]
    ours, inproc, ll = r["http"], r["in_process"], r["llama_cpp"]
    ref = ll["lora"]
    ttft, lttft = ours["ttft"], ref["ttft"]

    def row(engine: str, how: str, s: dict[str, Any], t: dict[str, Any] | None) -> str:
        tt = (f"{t['cold_s']:.3f} | {t['follow_up_s']:.3f} | "
              f"{_ratio(t['follow_up_s'], t['cold_s']):.2f}") if t else "— | — | —"
        return (f"| {prec} | {engine} | {how} | {s['gen_tok_s']:.1f} | {s['prompt_tok_s']:.0f} "
                f"| {_ratio(s['gen_tok_s'], ref['gen_tok_s']):.2f} "
                f"| {_ratio(s['prompt_tok_s'], ref['prompt_tok_s']):.2f} | {tt} |")

    return [
        row(f"mobizo serve, {scheme} bundle, adapter active", "HTTP (timings)", ours, ttft),
        row(f"mobizo generator, {scheme} bundle, adapter", "in-process", inproc, None),
        row(f"llama.cpp {kind}", "in-process", ll["base"], None),
        row(f"llama.cpp {kind} + same LoRA (GGUF)", "in-process", ref, lttft),
    ]


def format_vs_table(results: dict[str, Any]) -> str:
    """The whole report: machine line, table, parity, overhead, switches, targets."""
    m = results["machine"]
    schemes = results["schemes"]
    first = next(iter(schemes.values()))
    version = first["llama_cpp"].get("version", "?")
    lines = [
        f"CPU {m['cpu']} (int8 flags: {', '.join(m['int8_flags']) or 'none'}), "
        f"{m['threads']} threads both engines, {m['cpus']} cpus, load avg "
        f"{m['load_avg_1m']:.1f} at start; llama-cpp-python {version}. A shared machine is "
        "noisy: compare rows of one run, not runs.",
        f"prompt {first.get('prompt_tokens', '?')} tok (a distinct prompt per request: "
        f"prefills, not prompt-cache hits), gen {first.get('gen_tokens', '?')} tok"
        f" greedy; multi-turn: {first['conversation_tokens']}-token conversation whose "
        "follow-up sends the engine's own reply back, time to first token through HTTP for "
        "ours (whole request), prefill + first pick for llama.cpp (both prompt caches keep "
        "the longest common prefix)",
        "| precision | engine | measured | decode tok/s | prompt tok/s | decode ratio "
        "| prompt ratio | TTFT cold s | TTFT follow-up s | follow/cold |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for scheme, r in schemes.items():
        lines += _rows(scheme, r)
    lines.append("ratios: ÷ llama.cpp with the same LoRA at the same precision")
    for scheme, r in schemes.items():
        lines += _details(scheme, r)
    lines.append("targets:")
    lines += [f"  {'PASS' if ok else 'FAIL'}  {name}" for name, ok in targets(results).items()]
    return "\n".join(lines)


def _details(scheme: str, r: dict[str, Any]) -> list[str]:
    ip, sw, http = r["in_process"], r["switch"], r["http"]
    out = []
    for label, p in r.get("parity", {}).items():
        lg, g = p["logits"], p["greedy_ids"]
        out.append(
            f"{scheme} parity vs llama.cpp f32 {'with' if label == 'lora' else 'without'} "
            f"the LoRA: max |logits diff| {lg['max_abs_diff']:.2e} over {lg['steps']} steps "
            f"(max |logit| {lg['max_abs_logit']:.2f}); greedy token ids "
            f"{'identical' if g['identical'] else 'differ'} "
            f"({g['greedy_prefix_agreement']}/{g['of']} agree)")
    out.append(
        f"{scheme} host time per token {ip['host_ms_per_token']:.3f} ms = "
        f"{ip['host_overhead_pct']:.1f} % of a decode step ({ip['decode_step_ms']:.2f} ms); "
        f"HTTP request outside prefill + decode {http['outside_program_ms_per_request']:.1f} ms"
        f"{_load(http)}; follow-up reused {http['ttft']['reused_tokens']} cached tokens"
        + (f" of {http['ttft']['prompt_tokens']}" if "prompt_tokens" in http["ttft"] else ""))
    long, their_long = http.get("long"), r["llama_cpp"]["lora"].get("long")
    if long and their_long:  # not a target: what a long conversation's replies decode at
        out.append(
            f"{scheme} decode deep in the context (after a {r.get('long_context', '?')}-token "
            f"prompt): ours {long['gen_tok_s']:.1f} tok/s, llama.cpp {r['gguf']}+LoRA "
            f"{their_long['gen_tok_s']:.1f} tok/s, ratio "
            f"{_ratio(long['gen_tok_s'], their_long['gen_tok_s']):.2f}{_load(long)}")
    out.append(
        f"{scheme} adapter switches while generating: {sw['switches']}, requests during "
        f"{sw['requests_during']}, failed {sw['failed_requests']}; p99 over all "
        f"{sw['all_p99_ms']:.1f} ms; control p50 "
        f"{sw['control_p50_ms']:.1f} ms, p99 {sw['control_p99_ms']:.1f} ms; swap alone p99 "
        f"{sw['swap_only_p99_ms']:.1f} ms; watcher p99 {sw['watcher_p99_ms']:.1f} ms"
        f"{_load(sw)}")
    return out


def _load(stage: dict[str, Any]) -> str:
    """`` (load avg X)`` when the stage recorded the machine's load: a loaded shared machine
    stretches latencies, so a number is read beside it."""
    load = stage.get("load_avg_1m")
    return "" if load is None else f" (load avg {load:.1f})"
