"""The ``mobizo-export`` command that rebuilds a bundle, read from its (maybe old) manifest.

A bundle this agent cannot load is refused with the exact command that fixes it: the
checkpoint (or preset) it came from and the options that shaped its programs, as far as the
manifest says them. Pure: the manifest arrives as parsed JSON of any format, so every field
is read defensively; an option the manifest does not state is left at the exporter's default.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from agent.core.lora_layout import CANONICAL_TARGETS

# mobizo-export's defaults (exporter/cli.py): an option equal to its default is not repeated
_DEFAULTS = {"--quantize": "none", "--backend": "xnnpack", "--max-length": "256",
             "--max-context": "1024", "--prefill-chunk": "32", "--rank": "16", "--alpha": "32.0",
             "--head-rows": "512", "--seed": "0", "--attention": "llm-ops"}


def _get(raw: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(raw, dict):
            return None
        raw = raw.get(key)
    return raw


def _source(raw: Any) -> list[str]:
    """The positional checkpoint or ``--preset starter --seed N`` (from ``base.source``)."""
    source = _get(raw, "base", "source")
    if not isinstance(source, str) or not source:
        return ["CHECKPOINT_DIR"]
    if source.startswith("preset:"):
        words = source[len("preset:"):].split()
        seed = next((w.split("=", 1)[1] for w in words if w.startswith("seed=")), "0")
        return ["--preset", words[0] if words else "starter", "--seed", seed]
    return [source]


def _shapes(raw: Any) -> list[str]:
    shapes = _get(raw, "train", "shapes")
    if not isinstance(shapes, list) or not shapes:
        return []
    try:
        slices = sorted({int(s["slices"]) for s in shapes})
        batch = sorted({int(s["batch"]) for s in shapes})
    except (KeyError, TypeError, ValueError):
        return []
    return ["--slices", ",".join(map(str, slices)), "--batch", ",".join(map(str, batch))]


def _lora_layers(raw: Any) -> list[str]:
    layers, total = _get(raw, "lora", "layers"), _get(raw, "model", "num_layers")
    if not isinstance(layers, list) or not isinstance(total, int) or not layers:
        return []
    if sorted(layers) == list(range(total)):
        return []  # all: the default
    k = len(layers)
    if sorted(layers) == list(range(total - k, total)):
        return ["--lora-layers", f"last-{k}"]
    return []


def reexport_command(raw: Any, bundle_dir: Path) -> str:
    """``mobizo-export ... --out BUNDLE_DIR --force`` rebuilding the bundle ``raw`` describes."""
    args = ["mobizo-export", *_source(raw)]
    options = {
        "--quantize": _get(raw, "quantize"), "--backend": _get(raw, "backend"),
        "--max-length": _get(raw, "train", "max_length"),
        "--max-targets": _get(raw, "train", "max_targets"),
        "--head-rows": _get(raw, "train", "head_rows"),
        "--rank": _get(raw, "lora", "rank"), "--alpha": _get(raw, "lora", "alpha"),
    }
    infer = _get(raw, "infer")
    if isinstance(infer, dict):
        options["--max-context"] = infer.get("max_context")
        options["--prefill-chunk"] = infer.get("prefill_chunk")
        options["--attention"] = infer.get("attention")
    max_length = options["--max-length"]
    if isinstance(max_length, int) and options["--max-targets"] == max_length - 1:
        options["--max-targets"] = None  # the default: every position
    for flag, value in options.items():
        if value is not None and str(value) != _DEFAULTS.get(flag):
            args += [flag, str(value)]
    targets = _get(raw, "lora", "targets")
    if isinstance(targets, list) and tuple(targets) != CANONICAL_TARGETS:
        args += ["--targets", ",".join(map(str, targets))]
    args += _shapes(raw) + _lora_layers(raw)
    if "infer" in (raw if isinstance(raw, dict) else {}) and infer is None:
        args.append("--train-only")
    args += ["--out", str(bundle_dir), "--force"]
    return shlex.join(args)
