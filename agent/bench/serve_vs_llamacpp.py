"""``mobizo-bench serve --vs-llamacpp``: our service against llama.cpp on the same weights.

One run, one machine, the same token ids fed to both engines, greedy, ``--threads`` for both
(issue 18 item 5). Per precision (our bundle's scheme beside llama.cpp's GGUF type:
fp32 / f32, 8da8w / q8_0, 8da4w / q4_0):

- **Our service, through its HTTP API** (what a user sees): completions of
  ``--prompt-tokens`` + ``--gen-tokens`` with the adapter active, a distinct prompt each
  (a repeated prompt would be a prompt-cache hit, not a prefill); prompt and decode tokens/s
  from the service's ``timings`` (prompt tokens/s over the tokens it fed), the whole
  request's latency beside them; the time to the first token of a multi-turn conversation
  (``--turns`` messages, about ``--conversation-tokens`` tokens) cold and as a follow-up
  turn: the client sends back the reply the service generated for the turn before (as a chat
  client does), and the prompt cache re-reads only what follows the longest common prefix;
  ``--switches`` adapter switches while a client keeps generating (control-request p99,
  failed requests); decode tokens/s deep in the context: ``--gen-tokens`` after a
  ``--long-context``-token prompt (where a long conversation's replies are decoded).
- **Our generator in-process** (the same program object, before the HTTP front starts): the
  host's time per token (sampling, detokenizing, stop scan: what is not the program) as a
  share of a decode step, and the greedy token ids.
- **llama.cpp** (llama-cpp-python, in-process): the GGUF written from the bundle's own
  checkpoint (agent/bench/gguf_writer.py), without and with our active adapter as a GGUF
  LoRA; prompt and decode tokens/s, the same multi-turn time to first token with its prompt
  cache (the longest common prefix stays in the KV cache, like llama.cpp server's
  ``cache_prompt``), its own reply sent back in the follow-up; with the LoRA, decode deep in
  the context after a prompt of ``--long-context`` tokens.
- **Parity** (fp32 vs f32): max |logits difference| over the first ``--parity-steps`` steps
  (teacher-forced on our greedy tokens), and the greedy token ids of both, compared as ids.

Tokens/s counts decode steps: ``n - 1`` forwards for ``n`` generated tokens on both sides
(the first token comes from the prompt's logits).
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from agent.bench import llamacpp as lc
from agent.bench.gguf_writer import quantize, read_shape, write_lora, write_model
from agent.bench.serve_common import (
    bench_prompt,
    greedy_ids,
    http_speeds,
    id_parity,
    switches_under_load,
    write_adapters,
)
from agent.core.bundle import QuantScheme

GGUF_TYPE: dict[str, str] = {"none": "f32", "8da8w": "q8_0", "8da4w": "q4_0"}


@dataclass(frozen=True)
class VsOptions:
    """What one ``--vs-llamacpp`` run measures (from the command line)."""

    workdir: Path
    threads: int = 2
    n_ctx: int = 1024  # llama.cpp's KV cells: the bundle's infer context
    prompt_tokens: int = 64
    gen_tokens: int = 64
    repeats: int = 3
    switches: int = 40
    turns: int = 6
    conversation_tokens: int = 750
    reply_tokens: int = 16  # what the previous turn generated before the follow-up
    ttft_repeats: int = 2
    parity_steps: int = 8
    long_context: int = 800  # prompt tokens before the deep-context decode (0: not measured)


TEMPLATE_TOKENS = 14  # "<|assistant|>\n" ... "</s>\n" around each message
OTHER = [{"role": "user", "content": "something else"}]  # resident before a cold turn
WORDS = ("the", "adapter", "learns", "from", "each", "reply", "a", "user", "corrects", "on",
         "board", "and", "keeps", "what", "helps", "it", "answer", "better", "next", "time")


_T0 = time.monotonic()


def progress(what: str) -> None:
    """One line per stage with the minutes since the run began (runs take minutes)."""
    print(f"[{(time.monotonic() - _T0) / 60:5.1f} min] {what}", flush=True)


def conversation(turns: int, tokens: int) -> list[dict[str, str]]:
    """``turns`` alternating user/assistant messages, then a new user turn; about ``tokens``
    tokens in all with the starter's chat template and byte tokenizer (one token per
    byte, and about 14 per message for the role tag and the end of turn)."""
    rng = np.random.default_rng(0)
    per = max(8, tokens // (turns + 1) - TEMPLATE_TOKENS)
    msgs = []
    for i in range(turns + 1):
        words: list[str] = []
        while sum(len(w) + 1 for w in words) < per:
            words.append(str(WORDS[int(rng.integers(len(WORDS)))]))
        msgs.append({"role": "user" if i % 2 == 0 else "assistant",
                     "content": " ".join(words)[:per]})
    return msgs


def base_checkpoint(manifest: Any, workdir: Path) -> Path:
    """The HF checkpoint directory a bundle was exported from, checked by its sha256
    (the starter preset is regenerated from its seed)."""
    from agent.errors import BundleError
    from exporter.checkpoint import inspect_checkpoint
    from exporter.starter import make_starter_checkpoint

    source = manifest.base.source
    if source.startswith("preset:"):
        seed = int(source.rsplit("seed=", 1)[1]) if "seed=" in source else 0
        path = Path(workdir) / f"ckpt-starter-seed{seed}"
        if not (path / "config.json").is_file():
            make_starter_checkpoint(path, seed=seed)
    else:
        path = Path(source)
    if inspect_checkpoint(path).sha256() != manifest.base.sha256:
        raise BundleError(f"the checkpoint at {path} does not match the bundle (sha256 "
                          "differs); llama.cpp must run the weights the bundle was exported "
                          "from: re-export the bundle or restore the checkpoint")
    return path


def gguf_files(manifest: Any, workdir: Path, kinds: Sequence[str],
               threads: int) -> dict[str, Path]:
    """GGUF files of the bundle's base, one per kind (f32 first, the others quantized
    from it by llama.cpp), kept in ``workdir`` by checkpoint hash."""
    ckpt = base_checkpoint(manifest, workdir)
    out = Path(workdir) / f"gguf-{manifest.base.sha256[:12]}"
    out.mkdir(parents=True, exist_ok=True)
    files = {"f32": out / "model-f32.gguf"}
    if not files["f32"].is_file():
        t0 = time.monotonic()
        write_model(ckpt, files["f32"])
        print(f"wrote {files['f32']} in {time.monotonic() - t0:.0f} s", flush=True)
    for kind in kinds:
        if kind != "f32":
            files[kind] = out / f"model-{kind}.gguf"
            if not files[kind].is_file():
                quantize(files["f32"], files[kind], kind, threads)
    return files


def ours_in_process(svc: Any, prompt_ids: list[int], n: int, lora_b: np.ndarray,
                    repeats: int) -> dict[str, Any]:
    """Our generator on the service's program (before the HTTP front starts): greedy token
    ids and the host's share of a decode step (requests without logprobs, as usual)."""
    from agent.services.inference.sampling import SamplingParams

    ids = greedy_ids(svc, prompt_ids, n, lora_b)
    params = SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)
    runs = [svc.generator.generate(prompt_ids, params, lora_b) for _ in range(repeats)]
    r = sorted(runs, key=lambda x: x.decode_s)[len(runs) // 2]
    steps = max(1, r.completion_tokens - 1)
    in_program = r.decode_s - r.host_s
    return {"tokens": ids, "prompt_tok_s": r.prompt_tokens / r.prefill_s,
            "gen_tok_s": steps / r.decode_s,
            "host_ms_per_token": 1000 * r.host_s / r.completion_tokens,
            "decode_step_ms": 1000 * in_program / steps,
            "host_overhead_pct": 100 * (r.host_s / r.completion_tokens) / (in_program / steps)}


def logits_parity(program: Any, lora_b: np.ndarray, engine: lc.LlamaCppEngine,
                  prompt_ids: list[int], steps: int) -> dict[str, float]:
    """Max |logits difference| between our program and llama.cpp on the prompt and the
    next ``steps - 1`` greedy tokens (ours, fed to both)."""
    program.reset()
    ours = program.forward(prompt_ids, 0, lora_b)
    theirs = engine.forward(prompt_ids, 0)
    diffs, scale = [], []
    pos = len(prompt_ids)
    for _ in range(steps):
        diffs.append(float(np.max(np.abs(ours - theirs))))
        scale.append(float(np.max(np.abs(ours))))
        token = int(np.argmax(ours))
        ours = program.forward([token], pos, lora_b)
        theirs = engine.forward([token], pos)
        pos += 1
    return {"max_abs_diff": max(diffs), "max_abs_logit": max(scale), "steps": steps}


def follow_up(messages: list[dict[str, str]], reply: str) -> list[dict[str, str]]:
    """``messages`` with its last assistant turn replaced by ``reply``: the conversation a
    chat client sends after the engine answered ``messages[:-2]`` with ``reply``."""
    return [*messages[:-2], {"role": "assistant", "content": reply}, messages[-1]]


def service_ttft(client: Any, messages: list[dict[str, str]], reply_tokens: int,
                 repeats: int) -> dict[str, float]:
    """Time to the first token of a follow-up turn through HTTP (a request for one token, as
    a client sees it), cold and right after the turn before it.

    The turn before is ``messages[:-2]`` (ending at a user message), answered with
    ``reply_tokens`` tokens; the follow-up sends that reply back as the assistant message
    and the last user message of ``messages``. Cold: another conversation ran in between.
    """
    def ask(msgs: list[dict[str, str]], n: int) -> tuple[float, dict[str, Any], str]:
        t0 = time.perf_counter()
        r = client.post("/v1/chat/completions", {"messages": msgs, "max_tokens": n,
                                                 "temperature": 0, "ignore_eos": True})
        wall = time.perf_counter() - t0
        if r.status != 200:
            raise RuntimeError(f"the service answered {r.status}: {r.text[:300]}")
        body = r.json
        return wall, body["usage"], str(body["choices"][0]["message"]["content"])

    history = messages[:-2]  # the turn before: its prompt ended at the user message
    conversation = follow_up(messages, ask(history, reply_tokens)[2])  # greedy: same reply
    cold, follow = [], []
    used: dict[str, Any] = {}
    for _ in range(repeats):
        ask(OTHER, 1)  # another conversation: this one is no longer resident
        cold.append(ask(conversation, 1)[0])
        ask(history, reply_tokens)
        wall, used, _ = ask(conversation, 1)
        follow.append(wall)
    return {"cold_s": float(np.median(cold)), "follow_up_s": float(np.median(follow)),
            "reused_tokens": int(used["prompt_tokens_details"]["cached_tokens"]),
            "prompt_tokens": int(used["prompt_tokens"])}


def llama_side(files: dict[str, Path], lora: Path, kind: str, prompt_ids: list[int],
               conv: tuple[list[int], list[int], Callable[[list[int]], list[int]]],
               args: VsOptions, long_ids: list[int] | None = None) -> dict[str, Any]:
    """llama.cpp at ``kind``: speeds without and with the LoRA, multi-turn TTFT and (given
    ``long_ids``) decode deep in the context with it."""
    out: dict[str, Any] = {}
    for label, adapter in (("base", None), ("lora", lora)):
        progress(f"llama.cpp {kind} {'with' if adapter else 'without'} the LoRA")
        engine = lc.LlamaCppEngine(files[kind], threads=args.threads, n_ctx=args.n_ctx,
                                   lora=adapter)
        out["version"] = engine.version
        out[label] = lc.speed(engine, prompt_ids, args.gen_tokens, args.repeats)
        if adapter is not None:
            out[label]["ttft"] = lc.time_to_first_token(
                engine, conv[0], conv[1], conv[2], args.reply_tokens, args.ttft_repeats)
            if long_ids:
                out[label]["long"] = lc.speed(engine, long_ids, args.gen_tokens, 1)
        del engine
        gc.collect()
    return out


def parity_fp32(svc: Any, lora_b: np.ndarray, files: dict[str, Path], lora: Path,
                prompt_ids: list[int], ours_ids: list[int], args: VsOptions) -> dict[str, Any]:
    """fp32 vs f32: logits and greedy token ids, without and with the adapter."""
    out: dict[str, Any] = {}
    zero = np.zeros_like(lora_b)
    for label, adapter, b in (("base", None, zero), ("lora", lora, lora_b)):
        progress(f"parity {'with' if adapter else 'without'} the LoRA")
        engine = lc.LlamaCppEngine(files["f32"], threads=args.threads, n_ctx=args.n_ctx,
                                   lora=adapter)
        logits = logits_parity(svc.program, b, engine, prompt_ids, args.parity_steps)
        theirs = lc.greedy(engine, prompt_ids, args.gen_tokens).tokens
        ours = ours_ids if adapter is not None else greedy_ids(
            svc, prompt_ids, args.gen_tokens, b)
        out[label] = {"logits": logits, "greedy_ids": id_parity(ours, theirs)}
        del engine
        gc.collect()
    return out


def run_scheme(bundle: Path, scheme: QuantScheme, files: dict[str, Path],
               args: VsOptions) -> dict[str, Any]:
    """Every measurement of one precision: ours (in-process, then HTTP), then llama.cpp."""
    from agent.errors import BundleError
    from agent.io.adapter_fs import AdapterValidator
    from agent.io.http import Client
    from agent.services.inference.service import InferenceService, ServeConfig

    work = Path(tempfile.mkdtemp(prefix="mobizo-bench-vs-llamacpp-"))
    validator = AdapterValidator(bundle)
    flats = write_adapters(work, validator, count=2)
    lora = write_lora(work / "a0", read_shape(base_checkpoint(validator.manifest, args.workdir)),
                      work / "lora-a0.gguf")
    svc = InferenceService(bundle, work / "state", ServeConfig(
        listen="127.0.0.1:0", threads=args.threads, watch_interval_s=0.01))
    versions = [svc.registry.publish(work / f"a{k}", activate=False) for k in range(2)]
    svc.registry.activate(versions[0])
    prompt_ids, _ = bench_prompt(svc, args.prompt_tokens)
    messages = conversation(args.turns, args.conversation_tokens)
    codec = svc.codec

    def follow_up_ids(reply_ids: list[int]) -> list[int]:  # llama.cpp's reply sent back
        return codec.encode_chat(follow_up(messages, codec.decode(reply_ids)))

    conv = (codec.encode_chat(OTHER), codec.encode_chat(messages[:-2]), follow_up_ids)
    longest = len(codec.encode_chat(messages)) + args.reply_tokens  # a generous bound
    need = max(longest + 1, args.prompt_tokens + args.gen_tokens,
               args.long_context + args.gen_tokens)
    if need > args.n_ctx:
        raise BundleError(f"{bundle} holds {args.n_ctx} tokens of context, the benchmark needs "
                          f"{need} (conversation {longest} + 1, prompt + generated "
                          f"{args.prompt_tokens + args.gen_tokens}, long context + generated "
                          f"{args.long_context + args.gen_tokens}); lower "
                          "--conversation-tokens / --prompt-tokens / --gen-tokens / "
                          "--long-context or give a bundle exported with a larger "
                          "--max-context")
    # the deep-context decode: a prompt of its own (not a prefix of the others: no cache hit)
    long_ids = bench_prompt(svc, args.long_context, 7)[0] if args.long_context else None
    res: dict[str, Any] = {"scheme": scheme, "gguf": GGUF_TYPE[scheme], "bundle": str(bundle),
                           "prompt_tokens": args.prompt_tokens, "gen_tokens": args.gen_tokens,
                           "conversation_tokens": len(codec.encode_chat(messages)),
                           "long_context": args.long_context,
                           "runtime_threads": svc.runtime_threads}
    progress("ours in-process")
    res["in_process"] = ours_in_process(svc, prompt_ids, args.gen_tokens, flats[0],
                                        args.repeats)
    if scheme == "none":
        res["parity"] = parity_fp32(svc, flats[0], files, lora, prompt_ids,
                                    res["in_process"]["tokens"], args)
    svc.start()
    try:
        assert svc.address is not None
        client = Client(*svc.address, token=svc.token)
        assert client.post("/v1/admin/reload-adapter").json["version"] == versions[0]
        progress("ours through HTTP")
        res["http"] = http_speeds(client, args.prompt_tokens, args.gen_tokens, args.repeats,
                                  svc)
        progress("ours: multi-turn time to first token")
        res["http"]["ttft"] = service_ttft(client, messages, args.reply_tokens,
                                           args.ttft_repeats)
        res["conversation_tokens"] = res["http"]["ttft"]["prompt_tokens"]
        progress(f"ours: {args.switches} adapter switches while generating")
        res["switch"] = switches_under_load(svc, client, versions, args.switches)
        if long_ids:
            progress(f"ours: decode after a {args.long_context}-token prompt")
            res["http"]["long"] = http_speeds(client, args.long_context, args.gen_tokens, 1,
                                              svc)
    finally:
        svc.stop()
    del svc
    gc.collect()
    res["llama_cpp"] = llama_side(files, lora, GGUF_TYPE[scheme], prompt_ids, conv, args,
                                  long_ids)
    shutil.rmtree(work, ignore_errors=True)  # adapters, LoRA GGUF, store: tens of MB at 110M
    return res


def run(bundles: dict[QuantScheme, Path], args: VsOptions,
        partial: Path | None = None) -> dict[str, Any]:
    """All precisions; returns a JSON-able dict (``machine``, ``schemes``). With
    ``partial``, the results so far are written there after each precision."""
    from agent.errors import BundleError
    from agent.io.bundle_files import read_manifest

    lc.llama_cpp_module()  # fail before any work when it is missing
    manifests = {s: read_manifest(b) for s, b in bundles.items()}
    first = next(iter(manifests.values()))
    for scheme, m in manifests.items():
        if m.quantize != scheme:
            raise BundleError(f"{bundles[scheme]} is a {m.quantize!r} bundle, given as "
                              f"{scheme!r}; pass it with the option of its scheme")
        if m.base.sha256 != first.base.sha256:
            raise BundleError(f"{bundles[scheme]} was exported from other weights than "
                              f"{next(iter(bundles.values()))}; llama.cpp runs one checkpoint: "
                              "give bundles of the same checkpoint")
    if first.infer is not None:  # llama.cpp gets the context our program has
        args = replace(args, n_ctx=first.infer.max_context)
    files = gguf_files(first, args.workdir, [GGUF_TYPE[s] for s in bundles], args.threads)
    results: dict[str, Any] = {"machine": machine(args.threads), "schemes": {}}
    for scheme, bundle in bundles.items():
        progress(f"measuring {scheme} ({bundle}) against llama.cpp {GGUF_TYPE[scheme]}")
        results["schemes"][scheme] = run_scheme(bundle, scheme, files, args)
        if partial is not None:
            partial.write_text(json.dumps(results, indent=2))
    return results


def machine(threads: int) -> dict[str, Any]:
    """The CPU model and its int8 dot-product flags, the threads and the load."""
    model, flags = "?", set[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "?":
                model = line.split(":", 1)[1].strip()
            elif line.startswith(("flags", "Features")) and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm", "sve")
    return {"cpu": model, "int8_flags": [f for f in wanted if f in flags], "threads": threads,
            "cpus": len(os.sched_getaffinity(0)), "load_avg_1m": os.getloadavg()[0]}
