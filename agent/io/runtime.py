"""Thin adapter over the ExecuTorch runtime: the only module that loads the service's and the
trainer's programs (through agent/io/pybindings.py, without ``executorch.runtime``'s imports).

- :class:`TrainProgram`: one method of a bundle's ``train.pte`` (one static (slices, batch)
  shape) and its ``head_loss`` method, ``losses(tokens, loss_mask, lora_b) -> [S]``; the mask
  is packed into the program's target window here (agent/core/targets.py), the shape method
  returns the hidden states at the targets, and the head scores them ``head_rows`` at a time,
  so the [rows, vocab] logits stay bounded however many slices a step runs.
- :class:`InferProgram`: the ``prefill``/``decode`` methods of ``infer.pte``; they share the
  KV cache (mutable buffers exported with ``share_mutable_buffers``), and take LoRA-B as an
  input on every call, so switching adapters costs nothing.

Programs are loaded from their path, so the runtime reads the file through its own data
loader instead of a Python bytes copy that would stay resident next to XNNPACK's packed
weights. A format-4 bundle keeps the frozen weights of both programs once, in
``weights.ptd`` (exporter/weights_file.py): it is checked against the manifest's size and
sha256 (agent/io/bundle_files.py) before anything loads, then mmapped by the runtime. XNNPACK's
weight cache is switched on before the first program loads (agent/io/xnnpack_options.py), so
every method of the process shares one packed copy of each weight: ``prefill`` and
``decode``, a train method and ``head_loss``, or a train and an infer program side by side.

The ExecuTorch thread pool is process-wide: :func:`size_thread_pool` sizes it once, at
process start, before any program is loaded (``[inference] threads`` in the service,
``[device] threads`` in the trainer and evaluator). Resizing it after programs had run
deadlocked (DESIGN §3), so it refuses to then.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agent.core.bundle import LONG_DECODE_METHOD, LONG_PREFILL_METHOD, BundleManifest
from agent.core.bundle_reexport import reexport_command
from agent.core.targets import target_window
from agent.errors import BundleError
from agent.io.bundle_files import read_manifest, weights_path
from agent.io.file_pages import release_file_pages
from agent.io.llm_ops import llm_ops_problem
from agent.io.pybindings import load_program, method_names, pybindings
from agent.io.xnnpack_options import enable_weight_cache

log = logging.getLogger(__name__)

# Whether this process has loaded a program: from then on the thread pool is not resized.
_loaded = False


def size_thread_pool(threads: int | None) -> int:
    """Size the ExecuTorch thread pool to ``threads``; returns the pool's size afterwards.

    Call once at process start, before any program is loaded. ``None`` or 0 keep the
    runtime's default (one thread per core). Once a program has been loaded in this process
    a different size is refused (logged, the pool stays as it is): resizing the pool under
    loaded programs deadlocked (DESIGN §3).

    Args:
        threads: the wanted number of threads (``[inference]``/``[device] threads``).
    """
    c = pybindings()
    current = int(c._threadpool_get_thread_count())
    if not threads or threads == current:
        return current
    if _loaded:
        log.warning("the ExecuTorch thread pool has %d threads and a program is loaded; "
                    "not resizing it to %d (size it at process start)", current, threads)
        return current
    c._unsafe_reset_threadpool(int(threads))
    return int(c._threadpool_get_thread_count())


def _load_program(path: Path, weights: Path | None = None) -> Any:  # executorch Program
    """Load the program at ``path``, its weights from ``weights`` (checked by the caller:
    :func:`agent.io.bundle_files.weights_path`), or from the program itself if None."""
    global _loaded
    if not path.is_file():
        raise BundleError(f"{path} is missing; re-export the bundle")
    enable_weight_cache()
    _loaded = True  # before loading: a failed load may have touched the pool too
    try:
        return load_program(str(path), None if weights is None else str(weights))
    except Exception as exc:  # the pybinding raises RuntimeError/ValueError with codes
        raise BundleError(f"ExecuTorch cannot load {path} ({exc}); re-export the bundle with "
                          "this version of mobizo-export") from exc


def _check_llm_ops(bundle_dir: Path, manifest: BundleManifest) -> None:
    """Refuse, before its methods load, an infer program that calls ExecuTorch's LLM ops
    where they could not be loaded (agent/io/llm_ops.py), with the command that fixes it."""
    attention = manifest.infer.attention if manifest.infer else "masked"
    problem = llm_ops_problem() if attention == "llm-ops" else None
    if problem is not None:
        raw = manifest.model_dump(mode="json")
        raw["infer"]["attention"] = "masked"
        raise BundleError(f"{bundle_dir}'s infer program attends with ExecuTorch's LLM ops, "
                          f"which cannot run here: {problem}; re-export it: "
                          f"{reexport_command(raw, bundle_dir)}")


def _load_methods(program: Any, path: Path, names: Sequence[str],
                  weights: Path | None = None) -> list[Any]:
    """Load ``names`` of ``program`` (from ``path``); a method that fails is a BundleError.

    Then the pages of ``weights`` that the runtime mapped and pinned are let go
    (agent/io/file_pages.py): what XNNPACK packed is in its cache by then, and the rest (the
    embedding table) comes back from the file a row at a time as tokens read it.
    """
    try:
        have = method_names(program)
        for name in names:  # the KeyError executorch.runtime's Program raised, same message
            if name not in have:
                raise KeyError(name)
        methods = [program.load_method(name) for name in names]
        if weights is not None:
            release_file_pages(weights)
        return methods
    except Exception as exc:  # the pybinding raises RuntimeError with the runtime's code
        raise BundleError(f"ExecuTorch cannot load the methods {', '.join(names)} of {path} "
                          f"({exc}); re-export the bundle with this version of "
                          "mobizo-export") from exc


class TrainProgram:
    """One loaded method of ``train.pte``: evaluates ``slices`` LoRA-B rows on ``batch`` sequences.

    Args:
        bundle_dir: the model bundle.
        slices: S, the number of LoRA-B rows per call (2q for P-RGE dual, q for P-RGE, 1 for
            MeZO and evaluation).
        batch: b, sequences per slice.
        threads: recorded only: the ExecuTorch thread pool is process-wide, sized once at
            process start by :func:`size_thread_pool`.
        program_file: load the methods from this file of the bundle instead of ``train.pte``
            (the benchmark's ``bench_infer.pte``, which holds the bundle's S = 1 shapes alone).
    """

    def __init__(self, bundle_dir: Path, *, slices: int, batch: int,
                 threads: int | None = None, manifest: BundleManifest | None = None,
                 program_file: str | None = None) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.manifest = manifest or read_manifest(self.bundle_dir)
        spec = self.manifest.train
        shape = spec.method_for(slices, batch)
        if shape is None:
            have = ", ".join(f"(slices={s.slices}, batch={s.batch})" for s in spec.shapes)
            raise BundleError(
                f"{self.bundle_dir} has no train method for slices={slices}, batch={batch}; "
                f"it has {have}. Choose one of those, or re-export with --slices/--batch "
                "including these values"
            )
        self.slices, self.batch = slices, batch
        self.max_length = spec.max_length
        self.max_targets = spec.max_targets
        self.num_params = self.manifest.lora.num_params
        self.threads = threads
        self.dropped_targets = 0  # targets beyond the window so far (see agent/core/targets.py)
        self.head_rows = spec.head_rows
        path = self.bundle_dir / (program_file or spec.program)
        # the bundle's own program reads the shared weights file; a benchmark program
        # (program_file) carries its own
        weights = None if program_file else weights_path(self.bundle_dir, self.manifest)
        self._program = _load_program(path, weights)
        self._method, self._head = _load_methods(self._program, path,
                                                 (shape.method, spec.head_method), weights)
        self.method_name = shape.method

    def losses(self, tokens: torch.Tensor, loss_mask: torch.Tensor,
               lora_b: torch.Tensor) -> torch.Tensor:
        """Per-slice mean token cross-entropy [S] (float32).

        Args:
            tokens: [b, t] int token ids, t <= max_length; shorter rows are right-padded.
            loss_mask: [b, t]; 1 where token t is a target (predicted from position t-1).
                A row with more than ``max_targets`` targets is scored on its first
                ``max_targets`` (counted in ``dropped_targets``, warned once).
            lora_b: [S, P] float32, one flat LoRA-B row per slice.
        """
        tokens = torch.as_tensor(tokens, dtype=torch.long)
        loss_mask = torch.as_tensor(loss_mask, dtype=torch.float32)
        lora_b = torch.as_tensor(lora_b, dtype=torch.float32)
        b, t = tokens.shape
        if b != self.batch or loss_mask.shape != tokens.shape:
            raise ValueError(f"expected tokens and loss_mask [{self.batch}, <= "
                             f"{self.max_length}], got {tuple(tokens.shape)} and "
                             f"{tuple(loss_mask.shape)}")
        if t > self.max_length:
            raise ValueError(f"sequence length {t} exceeds the bundle's max_length "
                             f"{self.max_length}; truncate, or re-export with --max-length")
        if lora_b.shape != (self.slices, self.num_params):
            raise ValueError(f"expected lora_b [{self.slices}, {self.num_params}], "
                             f"got {tuple(lora_b.shape)}")
        if t < self.max_length:  # right-pad: causal attention keeps padding out of real tokens
            tokens = torch.nn.functional.pad(tokens, (0, self.max_length - t))
        window = target_window(loss_mask, self.max_targets)
        if window.dropped:
            if not self.dropped_targets:
                log.warning("%s scores at most %d targets per sequence (its max_targets); "
                            "a batch had %d more, left out of the loss. Re-export with a "
                            "larger --max-targets to train on whole long responses",
                            self.bundle_dir, self.max_targets, window.dropped)
            self.dropped_targets += window.dropped
        hidden = self._method([tokens.contiguous(), window.positions,
                               lora_b.contiguous()])[0]  # [S·b·K, d], slice-major
        targets = torch.gather(tokens, 1, window.positions + 1).repeat(self.slices, 1)
        nll = self._head_nll(hidden, targets.reshape(-1))
        weights = window.weights.reshape(1, -1)
        per_slice = (nll.reshape(self.slices, -1) * weights).sum(dim=1)
        return per_slice / window.weights.sum().clamp_min(1.0)

    def _head_nll(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """−log p(target) of every row, ``head_rows`` rows per call of the head method."""
        parts = []
        for start in range(0, hidden.shape[0], self.head_rows):
            stop = start + self.head_rows
            parts.append(self._head([hidden[start:stop].contiguous(),
                                     targets[start:stop].contiguous()])[0].clone())
        return torch.cat(parts) if len(parts) > 1 else parts[0]


# The infer program's methods for prefill chunks and decoded tokens deep in the context,
# where it has them (format 5 bundles exported with the LLM ops; older ones lack one or both
# and are served without), and from what share of the bundle's context on the runtime uses
# each: custom_sdpa's work grows with the positions written, the masked form's with the whole
# cache, so where they cross scales with the context. Measured on the 110M shape with a
# 1024-token cache (2 threads): a 32-token chunk (8da8w) with custom_sdpa took 48 / 55 / 131 /
# 162 ms at 64 / 256 / 600 / 960 tokens of context, the masked form 67 / 65 / 70 / 56 ms,
# crossing near 300; a decoded token (fp32) 27.1 / 28.9 / 30.7 / 41.4 / 37.7 ms at 512 / 640
# / 704 / 768 / 960, the masked form 30.3-32.4 ms everywhere, crossing near 700.
LONG_PREFILL, LONG_DECODE = LONG_PREFILL_METHOD, LONG_DECODE_METHOD
LONG_PREFILL_SHARE = 320 / 1024
LONG_DECODE_SHARE = 704 / 1024


class InferProgram:
    """The generation program: a KV cache shared by ``prefill`` (fixed chunk) and ``decode``.

    ``forward(ids, start_pos, lora_b)`` feeds ``ids`` at positions ``start_pos..`` and returns
    the float32 logits [vocab] after the last one. Positions after the ones written are masked
    inside the program, so moving ``start_pos`` back (a new conversation, or re-using a shared
    prefix) needs no clearing; :meth:`reset` exists for callers that want to say so.
    """

    def __init__(self, bundle_dir: Path, *, threads: int | None = None,
                 manifest: BundleManifest | None = None,
                 long_prefill_from: int | None = None,
                 long_decode_from: int | None = None) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.manifest = manifest or read_manifest(self.bundle_dir)
        spec = self.manifest.infer
        if spec is None:
            raise BundleError(f"{self.bundle_dir} is a train-only bundle (exported with "
                              "--train-only, for benchmarks) and cannot serve; export one "
                              "without --train-only")
        self.max_context = spec.max_context
        self.chunk = spec.prefill_chunk
        self.vocab_size = self.manifest.model.vocab_size
        self.num_params = self.manifest.lora.num_params
        self.threads = threads
        path = self.bundle_dir / spec.program
        weights = weights_path(self.bundle_dir, self.manifest)
        self._program = _load_program(path, weights)
        _check_llm_ops(self.bundle_dir, self.manifest)
        names = ("prefill", "decode") + tuple(m for m in (LONG_PREFILL, LONG_DECODE)
                                              if m in spec.methods)
        methods = dict(zip(names, _load_methods(self._program, path, names, weights),
                           strict=True))
        self._prefill, self._decode = methods["prefill"], methods["decode"]
        # a chunk or token this far into the context is attended by the masked form
        # (exporter/programs.py infer_method_names: custom_sdpa's cost grows with the context)
        self._prefill_long, self._decode_long = methods.get(LONG_PREFILL), methods.get(LONG_DECODE)
        self.long_prefill_from = (round(LONG_PREFILL_SHARE * self.max_context)
                                  if long_prefill_from is None else long_prefill_from)
        self.long_decode_from = (round(LONG_DECODE_SHARE * self.max_context)
                                 if long_decode_from is None else long_decode_from)

    def reset(self) -> None:
        """Start a new sequence (nothing to clear: unwritten positions are masked)."""

    def forward(self, token_ids: Sequence[int], start_pos: int,
                lora_b: np.ndarray) -> np.ndarray:
        ids = [int(i) for i in token_ids]
        if not ids:
            raise ValueError("forward() needs at least one token")
        if start_pos < 0 or start_pos + len(ids) > self.max_context:
            raise ValueError(
                f"positions {start_pos}..{start_pos + len(ids) - 1} do not fit the context of "
                f"{self.max_context} tokens; shorten the prompt or re-export with --max-context"
            )
        row = torch.as_tensor(np.asarray(lora_b, dtype=np.float32)).reshape(1, -1)
        if row.shape[1] != self.num_params:
            raise ValueError(f"lora_b has {row.shape[1]} values, the bundle needs "
                             f"{self.num_params}")
        pos, i, logits = start_pos, 0, None
        c = self.chunk
        while i < len(ids):
            rest = len(ids) - i
            if rest > 1 and pos + c <= self.max_context:
                n = min(rest, c)
                chunk = torch.zeros(1, c, dtype=torch.long)
                chunk[0, :n] = torch.tensor(ids[i : i + n])
                # padding beyond n writes cache slots that later tokens overwrite before
                # anything attends to them
                prefill = self._prefill
                if self._prefill_long is not None and pos >= self.long_prefill_from:
                    prefill = self._prefill_long
                logits = prefill([chunk, torch.tensor([pos]), torch.tensor([n - 1]), row])[0]
            else:
                n = 1
                decode = self._decode
                if self._decode_long is not None and pos >= self.long_decode_from:
                    decode = self._decode_long
                logits = decode(
                    [torch.tensor([[ids[i]]]), torch.tensor([pos]), torch.tensor([0]), row])[0]
            i += n
            pos += n
        assert logits is not None  # ids is not empty, so the loop ran
        return np.array(logits.reshape(-1).numpy(), dtype=np.float32)  # a copy, as float32
