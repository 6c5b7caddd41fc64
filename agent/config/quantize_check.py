"""Does the model bundle have the quantization scheme the config asks for? (issue 8)

A board profile states the scheme its bundle should be exported with (``[service] quantize``),
chosen from the board's memory. A bundle of another scheme still works — training, serving and
adapters only need the bundle to agree with itself — so a mismatch is a warning that names the
``mobizo-export`` command to fix it, never an error. ``mobizo-agent config check`` prints it and
the daemon logs it at start.
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path

from agent.config.loader import LoadedConfig
from agent.core.bundle import MANIFEST_NAME, BundleManifest
from agent.core.lora_layout import CANONICAL_TARGETS
from agent.errors import BundleError
from agent.io.bundle_files import read_manifest

STARTER_SOURCE = "preset:starter"


def warn_if_scheme_differs(loaded: LoadedConfig, log: logging.Logger) -> str | None:
    """Log :func:`bundle_scheme_warning` (daemon start); returns it for the caller and tests."""
    warning = bundle_scheme_warning(loaded)
    if warning is not None:
        log.warning("%s", warning)
    return warning


def bundle_scheme_warning(loaded: LoadedConfig) -> str | None:
    """The warning for the bundle at ``service.bundle_dir``, or None when it matches.

    Two checks, one line each: the scheme (None when nothing is expected, ``any``) and the KV
    cache's context against ``inference.max_context`` (:func:`context_waste`). None too when
    there is no readable bundle: the commands that load the bundle report that themselves.
    """
    cfg = loaded.config
    expected = cfg.service.quantize
    if not (cfg.bundle_dir / MANIFEST_NAME).is_file():
        return None
    try:
        manifest = read_manifest(cfg.bundle_dir)
    except BundleError:
        return None
    found = [scheme_mismatch(expected, manifest, cfg.bundle_dir,
                             origin=loaded.source_of("service.quantize")),
             context_waste(cfg.inference.max_context, manifest, cfg.bundle_dir,
                           origin=loaded.source_of("inference.max_context"))]
    return "\n".join(w for w in found if w is not None) or None


def scheme_mismatch(expected: str, manifest: BundleManifest, bundle_dir: Path, *,
                    origin: str) -> str | None:
    """Pure: the warning text when ``manifest`` is not quantized with ``expected``, else None.

    ``origin`` says where ``service.quantize`` was set ("profile raspberry-pi-4", "file ...").
    """
    if expected in ("any", manifest.quantize):
        return None
    new_dir = bundle_dir.with_name(f"{bundle_dir.name}-{expected}")
    return (
        f"the model bundle {bundle_dir} is quantized with {manifest.quantize!r}, but "
        f"service.quantize ({origin}) asks for {expected!r}; it still works, but it is not the "
        f"size and speed this config is sized for. Re-export it with `"
        f"{export_command(manifest, new_dir, expected)}` and point service.bundle_dir at "
        f"{new_dir} (adapters trained on {manifest.quantize!r} do not load on it: they are "
        f"retrained), or set service.quantize = {manifest.quantize!r} to keep this bundle"
    )


def context_waste(context: int, manifest: BundleManifest, bundle_dir: Path, *,
                  origin: str) -> str | None:
    """Pure: the warning text when the bundle's KV cache holds more tokens than the service
    may use (``inference.max_context``, set by ``origin``), else None.

    The cache is sized at export (``--max-context``) and is resident whole while the program is
    loaded, whatever the service uses of it: at the 110M Llama shape each 1024 tokens are 72 MB,
    a third of its int8 weights (docs/architecture.md, "Memory on the board").
    """
    infer = manifest.infer
    if infer is None or infer.max_context <= context:
        return None
    m = manifest.model
    wasted = 2 * m.num_layers * m.num_kv_heads * m.head_dim * 4 * (infer.max_context - context)
    new_dir = bundle_dir.with_name(f"{bundle_dir.name}-ctx{context}")
    command = export_command(manifest, new_dir, manifest.quantize).replace(
        f"--max-context {infer.max_context}", f"--max-context {context}")
    return (
        f"the model bundle {bundle_dir} holds a KV cache of {infer.max_context} tokens, but "
        f"inference.max_context ({origin}) lets the service use {context}: "
        f"{wasted / 2**20:.0f} MiB stay resident for nothing. Re-export it with `{command}` and "
        f"point service.bundle_dir at {new_dir}, or raise inference.max_context to "
        f"{infer.max_context}"
    )


def export_command(manifest: BundleManifest, out: Path, scheme: str) -> str:
    """The ``mobizo-export`` command line that rebuilds ``manifest``'s bundle with ``scheme``."""
    source = manifest.base.source
    if source.startswith(STARTER_SOURCE):
        seed = source.partition("seed=")[2].strip() or "0"
        args = ["--preset", "starter", "--seed", seed]
    else:
        args = [source]
    train = manifest.train
    args += [
        "--out", str(out), "--quantize", scheme,
        "--slices", ",".join(str(s) for s in sorted({s.slices for s in train.shapes})),
        "--batch", ",".join(str(b) for b in sorted({s.batch for s in train.shapes})),
        "--max-length", str(train.max_length), "--max-targets", str(train.max_targets),
        "--rank", str(manifest.lora.rank), "--alpha", f"{manifest.lora.alpha:g}",
        "--lora-layers", _lora_layers(manifest),
    ]
    if manifest.infer is None:  # a benchmark bundle: no inference program
        args.append("--train-only")
    else:
        args += ["--max-context", str(manifest.infer.max_context),
                 "--prefill-chunk", str(manifest.infer.prefill_chunk)]
    if tuple(manifest.lora.targets) != CANONICAL_TARGETS:
        args += ["--targets", ",".join(manifest.lora.targets)]
    return shlex.join(["mobizo-export", *args])


def _lora_layers(manifest: BundleManifest) -> str:
    """``all`` or ``last-K``: the exporter only makes suffixes of the layer stack."""
    layers, n = tuple(manifest.lora.layers), manifest.model.num_layers
    if layers == tuple(range(n)):
        return "all"
    return f"last-{len(layers)}"
