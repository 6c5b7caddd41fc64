"""The export pipeline: checkpoint → checked programs → bundle directory, atomically.

Order of work: validate everything cheap first (files, family, tokenizer, limits, target dir),
then build the model, lower both programs into a temp dir beside the target, probe them
against eager (refuse to write a bundle that computes garbage), and only then rename the temp
dir into place. An interrupted or failed export leaves nothing at the target.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.core.bundle import (
    BaseCheckpoint,
    BundleManifest,
    InferProgramSpec,
    LoraSpec,
    ModelShape,
    TokenizerSpec,
    TrainProgramSpec,
    TrainShape,
    lora_layout_of,
)
from agent.core.lora_layout import LoraLayout
from agent.core.zo_directions import GENERATOR
from agent.errors import ExportError
from exporter import bundle_writer
from exporter.checkpoint import (
    Checkpoint,
    inspect_checkpoint,
    load_generation_config,
    load_model,
    load_tokenizer,
)
from exporter.families import check_config, model_shape
from exporter.lora_init import a_sha256, init_lora_a
from exporter.options import MAX_LENGTH, MIN_LENGTH, ExportOptions
from exporter.probe import PROBE_ATOL, probe_against_transformers, probe_mask
from exporter.programs import (
    BENCH_FORWARD_PROGRAM,
    BENCH_INFER_PROGRAM,
    adapter_forward_method_name,
    forward_method_name,
    infer_method_names,
    lower_programs,
    train_method_name,
)
from exporter.quantize import check_scheme, probe_quantized, quantize_base
from exporter.starter import make_starter_checkpoint

# Importable from here as before (benchmarks and tests name the bench programs through export).
__all__ = [
    "BENCH_FORWARD_PROGRAM", "BENCH_INFER_PROGRAM", "PROBE_ATOL", "adapter_forward_method_name",
    "export_bundle", "forward_method_name", "probe_mask", "train_method_name",
]

log = logging.getLogger(__name__)

def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "executorch", "transformers", "mobizo-agent"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def _check_limits(opts: ExportOptions, max_positions: int) -> None:
    if not MIN_LENGTH <= opts.max_length <= min(MAX_LENGTH, max_positions):
        raise ExportError(
            f"--max-length {opts.max_length} is out of range: choose between {MIN_LENGTH} and "
            f"{min(MAX_LENGTH, max_positions)} (the model's max_position_embeddings is "
            f"{max_positions})"
        )
    if not opts.train_only:  # a train-only bundle has no inference program to size
        _check_context(opts, max_positions)
    try:
        window = opts.target_window()
    except ValueError as exc:
        raise ExportError(str(exc)) from exc
    if window > opts.loss_chunk * 64:
        raise ExportError("loss_chunk is too small for --max-length; raise it")


def _check_context(opts: ExportOptions, max_positions: int) -> None:
    if not MIN_LENGTH <= opts.max_context <= min(MAX_LENGTH * 4, max_positions):
        raise ExportError(
            f"--max-context {opts.max_context} is out of range: choose between {MIN_LENGTH} "
            f"and {min(MAX_LENGTH * 4, max_positions)}"
        )
    if opts.prefill_chunk > opts.max_context:
        raise ExportError(f"the prefill chunk ({opts.prefill_chunk}) exceeds --max-context "
                          f"({opts.max_context}); raise --max-context")


def _prepare_target(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise ExportError(f"{out} already exists; pass --force to replace it or choose "
                          "another --out")
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a directory; remove it or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)


def export_bundle(checkpoint: Path | None, out: Path, opts: ExportOptions, *,
                  preset: str | None = None, force: bool = False) -> BundleManifest:
    """Export ``checkpoint`` (or ``preset``) into a bundle at ``out``; returns its manifest."""
    out = Path(out).absolute()
    check_scheme(opts.quantize, opts.backend)
    _prepare_target(out, force)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=".mobizo-export-", dir=out.parent) as tmp_str:
        tmp = Path(tmp_str)
        if preset is not None:
            if preset != "starter":
                raise ExportError(f"unknown preset {preset!r}; the only preset is 'starter'")
            ckpt_dir = make_starter_checkpoint(tmp / "_starter_ckpt", seed=opts.seed)
            source, random_weights = f"preset:starter seed={opts.seed}", True
            note = "random weights (starter preset): for tests and demos, it cannot speak"
        else:
            if checkpoint is None:
                raise ExportError("give a checkpoint directory or --preset starter")
            ckpt_dir, source, random_weights, note = Path(checkpoint).absolute(), "", False, ""
            source = str(ckpt_dir)
        ckpt = inspect_checkpoint(ckpt_dir)
        staging = tmp / "bundle"
        staging.mkdir()
        manifest = _export_into(ckpt, staging, opts, source, random_weights, note)
        if preset is not None:
            shutil.rmtree(ckpt_dir)
        _install(staging, out)
    log.info("exported %s in %.1f s", out, time.monotonic() - t0)
    return manifest


def _install(staging: Path, out: Path) -> None:
    """Rename the finished bundle into place (replacing an old one only once the new is whole)."""
    if out.exists():
        old = out.with_name(out.name + ".old-" + str(int(time.time())))
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(out)


def _export_into(ckpt: Checkpoint, staging: Path, opts: ExportOptions, source: str,
                 random_weights: bool, note: str) -> BundleManifest:
    """Build, lower, write and probe one bundle into the empty ``staging`` directory."""
    from exporter.model import Decoder

    check_config(_hf_config(ckpt))  # refuse what the decoder does not implement, unloaded
    hf = load_model(ckpt)
    shape = model_shape(hf.config, sum(p.numel() for p in hf.parameters()))
    _check_limits(opts, shape.max_position_embeddings)
    tok = load_tokenizer(ckpt, shape.vocab_size)
    generation = load_generation_config(ckpt, shape.vocab_size)
    try:
        layers = opts.lora_layer_indices(shape.num_layers)
    except ValueError as exc:
        raise ExportError(str(exc)) from exc
    # Build the manifest first: the layout comes from it, exactly as consumers will rebuild it.
    draft = _draft_manifest(opts, shape, tok, layers, BaseCheckpoint(
        source=source, sha256=ckpt.sha256(), random_weights=random_weights, note=note))
    layout = _layout(draft)
    lora_a = init_lora_a(layout, opts.seed)
    manifest = draft.model_copy(update={"lora": draft.lora.model_copy(update={
        "num_params": layout.num_params, "a_sha256": a_sha256(layout, lora_a)})})
    lora_layout_of(manifest)  # consistency check: consumers rebuild the same layout
    manifest = manifest.model_copy(update={"generation": generation})

    core = Decoder(hf, layout, lora_a)
    quantize_base(core, opts.quantize)  # base linears only; no-op for 'none'
    weights = lower_programs(core, opts, manifest, staging)
    manifest = manifest.model_copy(update={"weights": weights})

    bundle_writer.write_adapter(staging, layout, lora_a)
    bundle_writer.write_tokenizer(staging, tok)
    bundle_writer.write_generation_config(staging, ckpt.path)
    bundle_writer.write_manifest(staging, manifest)
    if opts.quantize == "none":
        probe_against_transformers(staging, manifest, hf, layout, lora_a)
    else:  # the reference is the eager model quantized the same way
        probe_quantized(staging, manifest, core, layout)
    return manifest


def _hf_config(ckpt: Checkpoint) -> Any:
    """transformers' config object of the checkpoint (normalized: rope parameters, layer
    types), without loading the weights."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(ckpt.path)
    except Exception as exc:  # transformers raises many types; name the file and the fix
        raise ExportError(f"transformers cannot read {ckpt.path / 'config.json'} ({exc}); "
                          "check it against the checkpoint's original") from exc


def _draft_manifest(opts: ExportOptions, shape: ModelShape, tok: Any, layers: tuple[int, ...],
                    base: BaseCheckpoint) -> BundleManifest:
    """The manifest before the LoRA layout is known (``num_params`` 1, no ``a_sha256``)."""
    return BundleManifest(
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        base=base,
        model=shape,
        lora=LoraSpec(rank=opts.rank, alpha=opts.alpha, targets=opts.targets, layers=layers,
                      num_params=1, a_sha256=""),
        train=TrainProgramSpec(max_length=opts.max_length, max_targets=opts.target_window(),
                               head_rows=opts.head_rows, shapes=tuple(
            TrainShape(method=train_method_name(s, b), slices=s, batch=b)
            for s, b in opts.train_shapes())),
        infer=None if opts.train_only else InferProgramSpec(
            max_context=opts.max_context, prefill_chunk=opts.prefill_chunk,
            attention=opts.attention, methods=infer_method_names(opts.attention)),
        tokenizer=TokenizerSpec(
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else (
                tok.eos_token_id or 0),
            has_chat_template=bool(getattr(tok, "chat_template", None)),
        ),
        backend=opts.backend,
        quantize=opts.quantize,
        versions=_versions(),
        zo_generator=GENERATOR,
    )


def _layout(manifest: BundleManifest) -> LoraLayout:
    """The flat LoRA-B layout of a draft manifest (whose num_params is not known yet)."""
    m = manifest.model
    q_out, kv_out = m.num_heads * m.head_dim, m.num_kv_heads * m.head_dim
    dims = {
        "q_proj": (m.hidden_size, q_out), "k_proj": (m.hidden_size, kv_out),
        "v_proj": (m.hidden_size, kv_out), "o_proj": (q_out, m.hidden_size),
        "gate_proj": (m.hidden_size, m.intermediate_size),
        "up_proj": (m.hidden_size, m.intermediate_size),
        "down_proj": (m.intermediate_size, m.hidden_size),
    }
    return LoraLayout.build(layer_dims=dims, layers=manifest.lora.layers,
                            targets=manifest.lora.targets, rank=manifest.lora.rank,
                            alpha=manifest.lora.alpha)
