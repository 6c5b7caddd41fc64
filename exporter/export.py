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

import torch

from agent.core.bundle import (
    BaseCheckpoint,
    BundleManifest,
    InferProgramSpec,
    LoraSpec,
    TokenizerSpec,
    TrainProgramSpec,
    TrainShape,
    lora_layout_of,
)
from agent.core.lora_layout import LoraLayout
from agent.errors import ExportError
from exporter import bundle_writer
from exporter.checkpoint import Checkpoint, inspect_checkpoint, load_model, load_tokenizer
from exporter.families import model_shape
from exporter.lora_init import a_sha256, init_lora_a
from exporter.options import MAX_LENGTH, MIN_LENGTH, ExportOptions
from exporter.quantize import check_scheme, probe_quantized, quantize_base
from exporter.starter import make_starter_checkpoint

log = logging.getLogger(__name__)

PROBE_ATOL = 2e-3  # losses are O(10); XNNPACK matches eager to ~1e-6 relative (DESIGN §3)


def train_method_name(slices: int, batch: int) -> str:
    return f"train_s{slices}_b{batch}"


# Benchmark-only programs of a --bench-forward bundle, apart from train.pte so that train.pte is
# exactly a product bundle's: the runtime sizes one shared activation arena per program to its
# largest method, so a method kept beside bigger ones would be measured with their arena.
BENCH_FORWARD_PROGRAM = "bench_forward.pte"  # the t_fwd forwards over max(slices)·b rows
BENCH_INFER_PROGRAM = "bench_infer.pte"  # the S = 1 method alone: inference memory of b rows


def forward_method_name(rows: int) -> str:
    """Bench-only plain forward over ``rows`` sequences with no LoRA (merged-weights speed)."""
    return f"forward_n{rows}"


def adapter_forward_method_name(rows: int) -> str:
    """Bench-only forward over ``rows`` sequences with one adapter for all of them, unmerged:
    the inference program's way of running an adapter (its B is a runtime input)."""
    return f"forward_adapter_n{rows}"


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
    from exporter.lower import lower_methods
    from exporter.model import (
        Decoder,
        HeadLoss,
        InferStep,
        KVCache,
        LossMethod,
        TrainForward,
        TrainMethod,
    )

    hf = load_model(ckpt)
    num_params = sum(p.numel() for p in hf.parameters())
    shape = model_shape(hf.config, num_params)
    _check_limits(opts, shape.max_position_embeddings)
    tok = load_tokenizer(ckpt, shape.vocab_size)
    try:
        layers = opts.lora_layer_indices(shape.num_layers)
    except ValueError as exc:
        raise ExportError(str(exc)) from exc

    shapes = opts.train_shapes()
    base_sha = ckpt.sha256()
    # Build the manifest first: the layout comes from it, exactly as consumers will rebuild it.
    draft = BundleManifest(
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        base=BaseCheckpoint(source=source, sha256=base_sha, random_weights=random_weights,
                            note=note),
        model=shape,
        lora=LoraSpec(rank=opts.rank, alpha=opts.alpha, targets=opts.targets, layers=layers,
                      num_params=1, a_sha256=""),
        train=TrainProgramSpec(max_length=opts.max_length, max_targets=opts.target_window(),
                               head_rows=opts.head_rows, shapes=tuple(
            TrainShape(method=train_method_name(s, b), slices=s, batch=b) for s, b in shapes)),
        infer=None if opts.train_only else InferProgramSpec(
            max_context=opts.max_context, prefill_chunk=opts.prefill_chunk),
        tokenizer=TokenizerSpec(
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else (
                tok.eos_token_id or 0),
            has_chat_template=bool(getattr(tok, "chat_template", None)),
        ),
        backend=opts.backend,
        quantize=opts.quantize,
        versions=_versions(),
    )
    layout = _layout(draft)
    lora_a = init_lora_a(layout, opts.seed)
    manifest = draft.model_copy(update={"lora": draft.lora.model_copy(update={
        "num_params": layout.num_params, "a_sha256": a_sha256(layout, lora_a)})})
    lora_layout_of(manifest)  # consistency check: consumers rebuild the same layout

    core = Decoder(hf, layout, lora_a)
    quantize_base(core, opts.quantize)  # base linears only; no-op for 'none'
    t, k, p = opts.max_length, opts.target_window(), layout.num_params
    def forward(slices: int, batch: int, **kw) -> TrainForward:  # noqa: ANN003
        return TrainForward(core, slices=slices, batch=batch, max_length=t, max_targets=k,
                            loss_chunk=opts.loss_chunk, **kw)

    def train_methods(shape_list: list[tuple[int, int]]) -> dict[str, tuple]:
        methods: dict[str, tuple] = {}
        for s, b in shape_list:
            m = TrainMethod(forward(s, b))
            methods[train_method_name(s, b)] = (m, m.example_args(p))
        head = HeadLoss(core)
        rows = torch.export.Dim("rows", min=1, max=opts.head_rows)
        methods[manifest.train.head_method] = (head, head.example_args(opts.head_rows),
                                               ({0: rows}, {0: rows}))
        return methods

    methods = train_methods(shapes)
    log.info("lowering train program: %s", ", ".join(methods))
    lower_methods(methods, staging / manifest.train.program, backend=opts.backend)
    if opts.bench_forward:
        rows = max(opts.slices) * max(opts.batch)
        bench = {}
        for name, fwd in ((forward_method_name(rows), forward(rows, 1, lora=False)),
                          (adapter_forward_method_name(rows), forward(1, rows))):
            m = LossMethod(fwd)
            bench[name] = (m, m.example_args(p))
        log.info("lowering benchmark forwards: %s", ", ".join(bench))
        lower_methods(bench, staging / BENCH_FORWARD_PROGRAM, backend=opts.backend)
        lower_methods(train_methods([(1, b) for b in opts.batch]),
                      staging / BENCH_INFER_PROGRAM, backend=opts.backend)

    if manifest.infer is not None:
        cache = KVCache(shape.num_layers, opts.max_context, shape.num_kv_heads, shape.head_dim)
        infer = {}
        for name, chunk in (("prefill", opts.prefill_chunk), ("decode", 1)):
            infer[name] = (
                InferStep(core, cache, chunk=chunk, max_context=opts.max_context),
                (torch.zeros(1, chunk, dtype=torch.long), torch.tensor([0]), torch.tensor([0]),
                 torch.zeros(1, p)),
            )
        log.info("lowering infer program: prefill (chunk %d), decode", opts.prefill_chunk)
        lower_methods(infer, staging / manifest.infer.program, backend=opts.backend,
                      share_mutable_buffers=True)

    bundle_writer.write_adapter(staging, layout, lora_a)
    bundle_writer.write_tokenizer(staging, tok)
    bundle_writer.write_manifest(staging, manifest)
    if opts.quantize == "none":
        _probe(staging, manifest, hf, layout, lora_a)
    else:  # the reference is the eager model quantized the same way
        probe_quantized(staging, manifest, core, layout)
    return manifest


def probe_mask(batch: int, length: int, max_targets: int) -> torch.Tensor:
    """A loss mask with a prompt-like unmasked start whose targets all fit the window (so the
    probe compares every target with the reference, which has no window)."""
    mask = torch.zeros(batch, length)
    start = max(1, length - min(max_targets, (3 * length) // 4))
    mask[:, start:] = 1
    return mask


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


def _probe(bundle: Path, manifest: BundleManifest, hf: torch.nn.Module, layout: LoraLayout,
           lora_a: dict[str, torch.Tensor]) -> None:
    """Run every exported method on a probe batch and compare with transformers' model."""
    from agent.io.runtime import InferProgram, TrainProgram
    from exporter.reference import hf_losses, merged_model

    gen = torch.Generator().manual_seed(1234)
    t, vocab = manifest.train.max_length, manifest.model.vocab_size
    for shape in manifest.train.shapes:
        s, b = shape.slices, shape.batch
        tokens = torch.randint(0, vocab, (b, t), generator=gen)
        mask = probe_mask(b, t, manifest.train.max_targets)
        lora_b = torch.randn(s, layout.num_params, generator=gen) * 0.02
        got = TrainProgram(bundle, slices=s, batch=b).losses(tokens, mask, lora_b)
        want = hf_losses(hf, layout, lora_a, tokens, mask, lora_b)
        err = float((got - want).abs().max())
        if not torch.isfinite(got).all() or err > PROBE_ATOL:
            raise ExportError(
                f"the exported method {shape.method} disagrees with transformers' model "
                f"(max |Δloss| = {err:.3g} > {PROBE_ATOL}); refusing to write this bundle. "
                "Try --backend portable, and report the checkpoint"
            )
        log.info("probe %s: max |Δloss| %.2e", shape.method, err)
    if manifest.infer is None:
        return

    n = min(manifest.infer.prefill_chunk + 3, manifest.infer.max_context)
    ids = torch.randint(0, vocab, (n,), generator=gen).tolist()
    row = (torch.randn(layout.num_params, generator=gen) * 0.02).numpy()
    prog = InferProgram(bundle)
    got = prog.forward(ids[:-1], 0, row)
    got_last = prog.forward(ids[-1:], n - 1, row)
    with torch.no_grad():
        ref = merged_model(hf, layout, lora_a, row)(torch.tensor([ids])).logits[0]
    err = max(float(abs(got - ref[-2].numpy()).max()), float(abs(got_last - ref[-1].numpy()).max()))
    if err > PROBE_ATOL * 5:
        raise ExportError(
            f"the exported infer program disagrees with transformers' model (max |Δlogit| = "
            f"{err:.3g}); refusing to write this bundle. Try --backend portable"
        )
    log.info("probe infer: max |Δlogit| %.2e", err)
