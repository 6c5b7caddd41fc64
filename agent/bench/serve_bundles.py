"""Serving bundles for ``mobizo-bench serve``: one per (shape, scheme), exported once and kept.

``starter`` is the starter preset; ``110m`` is the random-weight ~110M Llama shape of
``mobizo-bench zo`` (``agent.bench.zo.SHAPE_110M``, the starter's byte tokenizer), the shape
issue 18's targets are set on. Serving needs only ``infer.pte``; one tiny train method
(S = 1, b = 1, T = 16) keeps the export short. Exporting the 110M shape takes minutes per
scheme (XNNPACK lowering and the probe) and is done in a child process, so the process that
then times the service does not carry the exporter's heap; ``--bundle``/``--bundle-8da8w``/
``--bundle-8da4w`` reuse bundles exported earlier.
"""

from __future__ import annotations

import time
from pathlib import Path

from agent.core.bundle import QuantScheme

SHAPES = ("starter", "110m")


def serve_bundle_dir(workdir: Path, shape: str, scheme: QuantScheme, max_context: int) -> Path:
    """Where the serving bundle of ``shape``/``scheme`` is kept under ``workdir``."""
    prefix = "serve-starter" if shape == "starter" else f"serve-{shape}"
    return Path(workdir) / f"{prefix}-{scheme}-ctx{max_context}"


def checkpoint_dir(workdir: Path, shape: str) -> Path | None:
    """The HF checkpoint a ``shape`` is exported from (None: the starter is regenerated)."""
    return None if shape == "starter" else Path(workdir) / f"ckpt-{shape}"


def serve_bundle(workdir: Path, shape: str, scheme: QuantScheme, max_context: int) -> Path:
    """Export (once, then reuse) the ``shape`` bundle quantized with ``scheme`` for serving.

    Raises:
        ValueError: an unknown shape.
    """
    from agent.io.bundle_files import is_usable

    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")
    out = serve_bundle_dir(workdir, shape, scheme, max_context)
    if is_usable(out):  # kept from an earlier run, of this bundle format
        return out
    t0 = time.monotonic()
    if shape == "starter":
        _export(workdir, shape, out, scheme, max_context)
    else:
        _export_in_child(workdir, shape, out, scheme, max_context)
    print(f"exported {out} in {time.monotonic() - t0:.0f} s", flush=True)
    return out


def _options(scheme: QuantScheme, max_context: int):  # -> ExportOptions
    from exporter.options import ExportOptions

    # serving only needs infer.pte; one tiny train method keeps the export short
    return ExportOptions(slices=(1,), batch=(1,), max_length=16, max_context=max_context,
                         quantize=scheme)


def _export(workdir: Path, shape: str, out: Path, scheme: QuantScheme,
            max_context: int) -> None:
    from agent.bench.zo import make_110m_checkpoint
    from exporter.export import export_bundle

    opts = _options(scheme, max_context)
    if shape == "starter":
        export_bundle(None, out, opts, preset="starter", force=True)
        return
    ckpt = checkpoint_dir(workdir, shape)
    assert ckpt is not None
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    export_bundle(make_110m_checkpoint(ckpt), out, opts, force=True)


def _export_in_child(workdir: Path, shape: str, out: Path, scheme: QuantScheme,
                     max_context: int) -> None:
    import multiprocessing

    child = multiprocessing.get_context("spawn").Process(
        target=_export, args=(workdir, shape, out, scheme, max_context),
        name=f"export {out.name}")
    child.start()
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"exporting {out} failed in its child process (exit code "
                           f"{child.exitcode}); its error is printed above")
