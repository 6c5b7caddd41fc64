"""Setting up a learning benchmark: its bundle, checked; the eager twin; datasets; programs.

``mobizo-bench learn`` (agent/bench/learn.py) runs these steps before any method trains, so a
missing shape or a wrong scheme fails before minutes of work.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.bench.learn_methods import MethodSpec
from agent.bench.learn_quant import bundle_scheme_problem, scheme_problem, starter_linear_inputs
from agent.core.bundle import QuantScheme
from agent.errors import MobizoError

log = logging.getLogger(__name__)


def starter_bundle(methods: Sequence[MethodSpec], *, max_length: int, lora_layers: str,
                   rank: int, cache_dir: Path, quantize: QuantScheme = "none") -> Path:
    """Export (once) the starter preset with every shape the methods and scoring need.

    Raises:
        ValueError: ``quantize`` cannot quantize the starter's linears (before any export).
    """
    problem = scheme_problem(quantize, starter_linear_inputs())
    if problem:
        raise ValueError(problem)
    from agent.io.bundle_files import is_usable
    from exporter.export import export_bundle
    from exporter.options import ExportOptions

    slices = {1} | {m.slices for m in methods if m.kind == "zo"}
    batches = {1} | {m.batch for m in methods}
    # scoring (1 x 1), held-out loss (1 x the biggest batch) and each ZO method's own shape:
    # not the whole grid, whose biggest corner (32 slices x 16 sequences) nothing loads
    shapes = {(1, 1), (1, max(batches))} | {(m.slices, m.batch) for m in methods
                                             if m.kind == "zo"}
    opts = ExportOptions(slices=tuple(sorted(slices)), batch=tuple(sorted(batches)),
                         shapes=tuple(sorted(shapes)),
                         max_length=max_length, max_context=max(128, max_length),
                         prefill_chunk=16, seed=0, lora_layers=lora_layers, rank=rank,
                         alpha=2.0 * rank, quantize=quantize,
                         train_only=True)  # scoring uses the train program and the eager twin
    key = hashlib.sha256(opts.model_dump_json().encode()).hexdigest()[:10]
    out = Path(cache_dir) / f"starter-{key}"
    if is_usable(out):
        log.info("using the cached bundle %s", out)
        return out
    log.info("exporting the starter bundle to %s (shapes S=%s x b=%s, T=%d, quantize %s; "
             "minutes, once)", out, sorted(slices), sorted(batches), max_length, quantize)
    out.parent.mkdir(parents=True, exist_ok=True)
    export_bundle(None, out, opts, preset="starter", force=True)
    return out


@dataclass
class Programs:
    """The bundle's train programs, each (S, b) loaded once per benchmark."""

    bundle: Path
    manifest: Any
    backend: str
    cache: dict[tuple[int, int], Any] = field(default_factory=dict)

    def get(self, slices: int, batch: int) -> Any:
        from agent.training.programs import load_program

        key = (slices, batch)
        if key not in self.cache:
            self.cache[key] = load_program(self.bundle, self.backend, slices, batch)
        return self.cache[key]

    def for_method(self, m: MethodSpec) -> Any:
        """A ZO method's own program; None for first-order (it runs eagerly)."""
        from agent.training.programs import choose_train_shape

        if m.kind != "zo":
            return None
        assert m.mode is not None
        shape = choose_train_shape(self.manifest, m.mode, m.q, m.batch)
        return self.get(shape.slices, shape.batch)

    def for_eval(self) -> tuple[Any, Any]:
        """(loss program, score program): S=1 with the largest and the smallest batch."""
        from agent.training.programs import choose_eval_shape

        ones = sorted((s for s in self.manifest.train.shapes if s.slices == 1),
                      key=lambda s: s.batch)
        big = ones[-1] if ones else choose_eval_shape(self.manifest, 1)
        small = ones[0] if ones else big
        return self.get(big.slices, big.batch), self.get(small.slices, small.batch)


def checked_bundle(args: argparse.Namespace, methods: list[MethodSpec]) -> tuple[Path, Any]:
    """The bundle (given, or the starter exported once) and its manifest, checked against the
    methods before any work: its scheme, ε against a quantized base, every ZO shape present."""
    from agent.core.quant_guard import epsilon_warning
    from agent.io.bundle_files import read_manifest
    from agent.training.programs import choose_train_shape

    bundle = args.bundle or starter_bundle(methods, max_length=args.max_length,
                                           lora_layers=args.lora_layers, rank=args.rank,
                                           cache_dir=args.cache_dir,
                                           quantize=args.quantize or "none")
    manifest = read_manifest(bundle)
    problem = bundle_scheme_problem(args.quantize, manifest.quantize, str(bundle))
    if problem:
        raise ValueError(problem)
    eps_floor = epsilon_warning(manifest.quantize, min(
        (m.eps for m in methods if m.kind == "zo"), default=args.eps))
    if eps_floor:
        log.warning("%s", eps_floor)
    for m in methods:  # fail before any work if a shape is missing
        if m.kind == "zo":
            assert m.mode is not None
            choose_train_shape(manifest, m.mode, m.q, m.batch)
    return bundle, manifest


def eager_twin(bundle: Path, manifest: Any,
                methods: list[MethodSpec]) -> tuple[Any, list[MethodSpec]]:
    """The eager model (None if it cannot be built) and the methods it leaves runnable: the
    first-order baseline needs a differentiable eager model."""
    from agent.bench.learn_eager import EagerModel

    try:
        eager = EagerModel(bundle, manifest)
    except MobizoError as exc:
        log.warning("no eager model (%s): skipping the first-order baseline and exact match", exc)
        return None, [m for m in methods if m.kind == "zo"]
    if not eager.differentiable and any(m.kind == "fo" for m in methods):
        log.warning("skipping the first-order baseline: the base is quantized (%s) and torchao's "
                    "quantized linears pass no gradient to their input (the ZO methods need "
                    "none)", manifest.quantize)
        methods = [m for m in methods if m.kind == "zo"]
    return eager, methods


def datasets_for(args: argparse.Namespace, tokenizer: Any, length: int, pad_id: int) -> list[Any]:
    """``--data`` as one dataset, or one per ``--tasks`` name."""
    from agent.bench.learn_data import file_data, task_data
    from agent.bench.tasks import make_task

    if args.data is not None:
        return [file_data(args.data, tokenizer, max_length=length, pad_id=pad_id,
                          heldout_share=args.heldout_share)]
    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    return [task_data(make_task(n, args.seed, train_size=args.train_size,
                                heldout_size=args.heldout_size),
                      tokenizer, max_length=length, pad_id=pad_id) for n in names]
