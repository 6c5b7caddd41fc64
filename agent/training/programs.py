"""Pick an exported (slices, batch) method for a job and load it on the chosen backend.

``train.pte`` holds one method per static (slices, batch) shape (dynamic batch dimensions break
XNNPACK delegation, shared/DESIGN.md §3). A job needs S = 1, q or 2q slices (agent.core.zo);
it takes the exact shape when exported, else the smallest one with more slices and the same
batch (the extra rows carry the unperturbed B and cost compute, so we warn).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from agent.core import zo
from agent.core.bundle import BundleManifest, TrainShape
from agent.errors import BundleError, TrainingError

log = logging.getLogger(__name__)

ProgramFactory = Callable[[Path, int, int, "int | None"], zo.LossFn]


def describe_shapes(manifest: BundleManifest) -> str:
    return ", ".join(f"{s.slices}x{s.batch}" for s in sorted(
        manifest.train.shapes, key=lambda s: (s.slices, s.batch)))


def choose_train_shape(manifest: BundleManifest, mode: zo.Mode, q: int, batch: int) -> TrainShape:
    """The method a (mode, q, batch) job runs on.

    Raises:
        TrainingError: no exported shape fits; the message lists the ones that exist.
    """
    need = zo.slices_needed(mode, q)
    exact = manifest.train.method_for(need, batch)
    if exact is not None:
        return exact
    bigger = sorted((s for s in manifest.train.shapes if s.batch == batch and s.slices > need),
                    key=lambda s: s.slices)
    if bigger:
        log.warning("no %dx%d method in the bundle; using %dx%d (the %d extra slices are wasted "
                    "compute: re-export with this shape to avoid it)", need, batch,
                    bigger[0].slices, batch, bigger[0].slices - need)
        return bigger[0]
    raise TrainingError(
        f"mode {mode} with q={q}, batch={batch} needs a {need}x{batch} (slices x batch) "
        f"training method; this bundle exports only {describe_shapes(manifest)}. Choose "
        "--mode/--q/--batch to fit one of them (mezo needs 1xb, prge qxb, prge-dual 2qxb), or "
        f"re-export the bundle adding that shape (mobizo-export ... --slices {need} "
        f"--batch {batch})"
    )


def resolve_batch(manifest: BundleManifest, mode: zo.Mode, q: int, batch: int | None) -> int:
    """``batch`` if given; else the paper's q·b = 16 if exported, else the biggest exported b.

    Only batches exported with at least the mode's slice count are candidates.
    """
    if batch is not None:
        return batch
    need = zo.slices_needed(mode, q)
    batches = sorted({s.batch for s in manifest.train.shapes if s.slices >= need})
    if not batches:
        raise TrainingError(
            f"mode {mode} with q={q} needs {need} slices; this bundle exports only "
            f"{describe_shapes(manifest)} (slices x batch). Lower --q, or re-export with "
            f"mobizo-export ... --slices {need}"
        )
    paper = max(1, 16 // q)
    return paper if paper in batches else batches[-1]


def choose_eval_shape(manifest: BundleManifest, adapters: int) -> TrainShape:
    """The cheapest method that scores ``adapters`` adapters per call (ideally all at once)."""
    shapes = list(manifest.train.shapes)
    fitting = [s for s in shapes if s.slices >= adapters]
    if fitting:
        # fewest wasted slices, then the biggest batch (fewer calls)
        return min(fitting, key=lambda s: (s.slices, -s.batch))
    return max(shapes, key=lambda s: (s.slices, s.batch))


def load_program(bundle_dir: Path, backend: str, slices: int, batch: int,
                 threads: int | None = None) -> zo.LossFn:
    """Load the (slices, batch) method on ``executorch`` (train.pte) or the ``eager`` reference."""
    if backend == "executorch":
        try:
            from agent.io.runtime import TrainProgram
        except ImportError as exc:  # pragma: no cover - only in a broken install
            raise BundleError(f"the ExecuTorch runtime is not available: {exc}") from exc
        return TrainProgram(Path(bundle_dir), slices=slices, batch=batch, threads=threads)
    if backend == "eager":
        from exporter.reference import EagerTrainProgram

        return EagerTrainProgram(Path(bundle_dir), slices=slices, batch=batch, threads=threads)
    raise TrainingError(f"unknown backend {backend!r}; choose executorch or eager")


def size_runtime_threads(backend: str, threads: int | None) -> int | None:
    """Size the runtime's thread pool before the first program loads; returns its size.

    ``executorch``: the process-wide ExecuTorch pool (:func:`agent.io.runtime.size_thread_pool`;
    ``None`` = one thread per core). The eager reference has no pool of its own: ``None``.
    """
    if backend != "executorch":
        return None
    from agent.io.runtime import size_thread_pool

    return size_thread_pool(threads)


def default_factory(backend: str) -> ProgramFactory:
    def factory(bundle_dir: Path, slices: int, batch: int, threads: int | None) -> zo.LossFn:
        return load_program(bundle_dir, backend, slices, batch, threads)

    return factory
