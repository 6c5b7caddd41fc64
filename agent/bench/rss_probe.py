"""One memory measurement in a fresh process (run by ``mobizo-bench zo``; prints one JSON line).

``python -m agent.bench.rss_probe {infer|prge|firstorder|firstorder-hf} BUNDLE --q Q --batch B``

The two first-order LoRA steps (autograd, q·b sequences, one SGD update of B):

- ``firstorder``: our own export decoder in eager PyTorch with the bundle's loss window —
  the leanest first-order step we can build (logits only at the target positions);
- ``firstorder-hf``: what a user would otherwise pick — transformers' model with LoRA added
  the way PEFT adds it (``base(x) + scale·(x·Aᵀ)·Bᵀ`` on each target linear) and its own
  ``labels=`` loss, which computes logits at every position.

Baseline: resident memory after all imports. Peak: the kernel's high-water mark (VmHWM),
reset through /proc/self/clear_refs after the baseline, so import-time spikes do not count.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
from pathlib import Path

MB = 1024 * 1024


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    with contextlib.suppress(OSError):  # resets VmHWM to the current RSS
        Path("/proc/self/clear_refs").write_text("5")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=["infer", "prge", "firstorder", "firstorder-hf"])
    p.add_argument("bundle", type=Path)
    p.add_argument("--q", type=int, required=True)
    p.add_argument("--batch", type=int, required=True)
    args = p.parse_args(argv)

    import torch

    # Pay every import before the baseline: the runtime's shared libraries, transformers.
    from executorch.runtime import Runtime
    from transformers import LlamaForCausalLM, Qwen2ForCausalLM  # noqa: F401

    from agent.bench.zo import bench_mask
    from agent.core.bundle import lora_layout_of
    from agent.core.zo import zo_step
    from agent.io.bundle_files import read_manifest
    from agent.io.runtime import TrainProgram  # imports executorch for every kind
    from exporter.export import BENCH_INFER_PROGRAM
    from exporter.model import Decoder, TrainForward
    from exporter.reference import load_base_model, load_lora_a

    Runtime.get()
    m = read_manifest(args.bundle)
    t, q, b = m.train.max_length, args.q, args.batch
    tokens = torch.randint(0, min(256, m.model.vocab_size), (b, t))
    mask = bench_mask(b, t)
    gc.collect()
    base_kb = _status_kb("VmRSS")
    _reset_peak()
    out = {"weights_mb": m.model.num_params * 4 / MB}
    if args.kind == "infer":  # the S = 1 methods in a program of their own (exporter.export)
        fwd = TrainProgram(args.bundle, slices=1, batch=b, program_file=BENCH_INFER_PROGRAM)
        out["load_mb"] = (_status_kb("VmRSS") - base_kb) / 1024
        fwd.losses(tokens, mask, torch.zeros(1, m.lora.num_params))
    elif args.kind == "prge":
        prog = TrainProgram(args.bundle, slices=2 * q, batch=b)
        out["load_mb"] = (_status_kb("VmRSS") - base_kb) / 1024
        zo_step(prog, "prge-dual", torch.zeros(m.lora.num_params), tokens, mask, run_seed=0,
                step=0, q=q, eps=1e-2, lr=1e-4)
    elif args.kind == "firstorder-hf":
        hf = load_base_model(m, workdir=args.bundle.parent)
        layout = lora_layout_of(m)
        lora_b = _peft_style_lora(hf, layout, load_lora_a(args.bundle, layout))
        gc.collect()
        out["load_mb"] = (_status_kb("VmRSS") - base_kb) / 1024
        labels = tokens.masked_fill(mask == 0, -100).repeat(q, 1)  # transformers' ignore index
        hf(input_ids=tokens.repeat(q, 1), labels=labels).loss.backward()
        with torch.no_grad():
            for b_param in lora_b:
                b_param -= 1e-4 * b_param.grad
    else:  # first-order LoRA with autograd on q·b sequences, our decoder in eager PyTorch
        layout = lora_layout_of(m)
        hf = load_base_model(m, workdir=args.bundle.parent)
        core = Decoder(hf, layout, load_lora_a(args.bundle, layout))
        del hf
        gc.collect()
        out["load_mb"] = (_status_kb("VmRSS") - base_kb) / 1024
        fwd = TrainForward(core, slices=1, batch=q * b, max_length=t,
                           max_targets=m.train.max_targets)
        lora_b = torch.zeros(1, m.lora.num_params, requires_grad=True)
        loss = fwd(tokens.repeat(q, 1), mask.repeat(q, 1), lora_b)[0]
        loss.backward()
        with torch.no_grad():
            lora_b -= 1e-4 * lora_b.grad
    out["peak_mb"] = (_status_kb("VmHWM") - base_kb) / 1024
    out["baseline_mb"] = base_kb / 1024
    print(json.dumps(out))
    return 0


def _peft_style_lora(hf, layout, lora_a):  # noqa: ANN001, ANN202 - torch modules
    """Freeze ``hf`` and add a trainable zero B on each LoRA'd linear, as PEFT's forward does."""
    import torch

    hf.requires_grad_(False)
    modules = dict(hf.named_modules())
    params = []
    for e in layout:
        a = lora_a[e.peft_a_key]  # [r, in]
        b = torch.zeros(e.out_features, e.rank, requires_grad=True)
        params.append(b)

        def add_lora(_mod, inputs, output, a=a, b=b):  # noqa: ANN001, ANN202
            return output + layout.scaling * ((inputs[0] @ a.T) @ b.T)

        modules[e.module_path].register_forward_hook(add_lora)
    return params


if __name__ == "__main__":
    raise SystemExit(main())
