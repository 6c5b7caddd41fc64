"""The MobiZO training recipe: setup / train / save_checkpoint / save_adapter / cleanup.

A torchtune-style recipe object (torchtune/recipe_interfaces.py), composed of plain parts:
the pure estimator (agent.core.zo), the data stream (agent.training.data), a program with the
``LossFn`` shape (ExecuTorch ``train.pte`` or the eager reference), checkpoints
(agent.training.checkpoint) and the PEFT writer (agent.io.adapter_fs).

Everything that can be wrong is checked in :meth:`ZOTrainRecipe.setup`, before the first step:
bundle version, exported shapes and length, the data, the initial adapter, the checkpoint.

Stopping: between steps the recipe checks the ``should_stop`` callback, SIGTERM/SIGINT (the
daemon sends SIGTERM when device constraints stop holding: the current step finishes, a
checkpoint is written, the job exits with
:data:`~agent.training.result.EXIT_INTERRUPTED`), ``burst_steps`` and
``max_seconds``. Because batches and perturbations are pure functions of (seed, step), a
resumed run repeats exactly the steps the uninterrupted one would have taken.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch

from agent.core import zo
from agent.core.bundle import ADAPTER_DIR, BundleManifest, TrainShape
from agent.core.quant_guard import epsilon_warning
from agent.core.train_job import TrainJob
from agent.errors import TrainingError
from agent.io.bundle_files import read_manifest
from agent.training import checkpoint as ckpt_mod
from agent.training.data import BatchStream, Dataset, load_dataset
from agent.training.evaluate import heldout_losses
from agent.training.programs import (
    ProgramFactory,
    choose_train_shape,
    default_factory,
    resolve_batch,
    size_runtime_threads,
)
from agent.training.result import METRICS_NAME, Status, TrainResult
from agent.training.tokenize import Tokenizer, load_tokenizer

log = logging.getLogger(__name__)

def _sha16(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class ZOTrainRecipe:
    """One MobiZO fine-tuning job.

    Args:
        config: the job.
        program_factory: ``(bundle_dir, slices, batch, threads) -> LossFn``; default loads the
            config's backend (ExecuTorch ``train.pte`` or the eager reference).
        tokenizer: injected tokenizer; default loads the bundle's.
        should_stop: polled between steps; True ends the run as interrupted (resumable).
        on_step: receives each step's metrics dict (progress bar, JSON lines, daemon status).
        clock: monotonic seconds (injected so tests can bound time deterministically).
        handle_signals: install SIGTERM/SIGINT handlers during :meth:`train` (main thread only).
    """

    def __init__(
        self,
        config: TrainJob,
        *,
        program_factory: ProgramFactory | None = None,
        tokenizer: Tokenizer | None = None,
        should_stop: Callable[[], bool] | None = None,
        on_step: Callable[[dict[str, Any]], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        handle_signals: bool = True,
    ) -> None:
        self.config = config
        self._factory = program_factory or default_factory(config.backend)
        self._sizes_pool = program_factory is None  # an injected program has no runtime pool
        self.runtime_threads: int | None = None
        self._tokenizer = tokenizer
        self._should_stop = should_stop or (lambda: False)
        self._on_step = on_step
        self._clock = clock
        self._handle_signals = handle_signals
        self._signal: str | None = None
        self.manifest: BundleManifest | None = None
        self.dataset: Dataset | None = None
        self.program: zo.LossFn | None = None
        self.shape: TrainShape | None = None
        self.batch = config.batch or 1
        self.lora_b: torch.Tensor | None = None
        self.init_b: np.ndarray | None = None
        self.step = 0
        self._seconds_before = 0.0
        self._a_tensors: dict[str, np.ndarray] = {}
        self._config_hash = ""
        self._stream: BatchStream | None = None

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Validate everything and load bundle, data, program and checkpoint; no step runs."""
        from agent.io.adapter_fs import AdapterValidator  # numpy-only, but keep imports lazy

        cfg = self.config
        self.manifest = manifest = read_manifest(cfg.bundle)
        exported_len = manifest.train.max_length
        if cfg.max_length is not None and cfg.max_length > exported_len:
            raise TrainingError(
                f"--max-length {cfg.max_length} is beyond the bundle's exported length "
                f"{exported_len}; use at most {exported_len}, or re-export the bundle with "
                f"mobizo-export --max-length {cfg.max_length}"
            )
        if (warning := epsilon_warning(manifest.quantize, cfg.eps)) is not None:
            log.warning(warning)  # issue 8: quantized bases need a larger ε
        self.batch = resolve_batch(manifest, cfg.mode, cfg.q, cfg.batch)
        self.shape = choose_train_shape(manifest, cfg.mode, cfg.q, self.batch)
        validator = AdapterValidator(cfg.bundle, manifest)
        self._layout = validator.layout
        self._a_tensors = validator.a_tensors
        init_dir = cfg.init_adapter or (cfg.bundle / ADAPTER_DIR)
        self.init_b = validator.load_flat_b(init_dir)

        tokenizer = self._tokenizer or load_tokenizer(cfg.bundle, manifest.tokenizer.path)
        self._tokenizer = tokenizer
        pad_id = manifest.tokenizer.pad_token_id
        self.dataset = load_dataset(cfg.data, tokenizer, max_length=cfg.max_length or exported_len,
                                    pad_id=pad_id, heldout_share=cfg.heldout_share)
        if cfg.max_length is not None and cfg.max_length < exported_len:
            self.dataset = _pad_dataset(self.dataset, exported_len, pad_id)
        self._stream = BatchStream(self.dataset.train, self.batch, cfg.seed)
        s = self.dataset.stats
        log.info("data: %d train, %d held out (%d lines, %d malformed, %d duplicates, "
                 "%d truncated)", s.train, s.heldout, s.lines, s.malformed, s.duplicates,
                 s.truncated)

        self._config_hash = _sha16({
            "run": {**cfg.run_identity(), "batch": self.batch}, "bundle": manifest.bundle_id,
            "data": self.dataset.fingerprint,
            "init_b": hashlib.sha256(self.init_b.tobytes()).hexdigest()[:16],
        })
        self.lora_b = torch.from_numpy(self.init_b.copy())
        self.step = 0
        ckpt_dir = cfg.checkpoint_path
        if cfg.resume:
            found = ckpt_mod.load_checkpoint(ckpt_dir, config_hash=self._config_hash,
                                             num_params=self._layout.num_params)
            if found is not None:
                self.lora_b = torch.from_numpy(found.lora_b.copy())
                self.step = found.state.step
                self._seconds_before = found.state.seconds
                log.info("resuming from %s at step %d", found.path, self.step)
            else:
                log.info("no checkpoint in %s: starting at step 0", ckpt_dir)

        if self._sizes_pool:  # [device] threads, before the first program of the process
            self.runtime_threads = size_runtime_threads(cfg.backend, cfg.threads)
        self.program = self._factory(cfg.bundle, self.shape.slices, self.shape.batch, cfg.threads)
        self._buffers = zo.StepBuffers()  # the step's host memory, reused by every step
        prog_len = getattr(self.program, "max_length", exported_len)
        if prog_len != exported_len:
            raise TrainingError(f"the program takes {prog_len} tokens but the manifest says "
                                f"{exported_len}; the bundle is inconsistent, re-export it")
        if not cfg.resume:
            # A fresh run: drop an older run's checkpoints so generations never mix. Done last,
            # so a setup that fails leaves them alone.
            for name in (ckpt_mod.CURRENT, ckpt_mod.PREVIOUS):
                (ckpt_dir / name).unlink(missing_ok=True)

    # ------------------------------------------------------------------ train
    def train(self) -> TrainResult:
        """Run steps until done, out of budget, or asked to stop; checkpoint on the way out."""
        if self.program is None or self.lora_b is None or self._stream is None:
            raise TrainingError("call setup() before train()")
        cfg = self.config
        start_step = self.step
        t0 = self._clock()
        restore = self._install_signal_handlers()
        result = TrainResult(status="completed", start_step=start_step, end_step=start_step,
                             total_steps=cfg.steps, seconds=0.0,
                             runtime_threads=self.runtime_threads)
        try:
            status: Status = "completed"
            reason = ""
            while self.step < cfg.steps:
                reason = self._stop_reason(start_step, t0)
                if reason:
                    status = "interrupted" if reason.startswith(("signal", "stop")) else (
                        "time_budget" if reason == "max_seconds" else "burst_done")
                    break
                metrics = self._one_step()
                if result.train_loss_first is None:
                    result.train_loss_first = metrics["loss"]
                result.train_loss_last = metrics["loss"]
                if self.step % cfg.checkpoint_every == 0 and self.step < cfg.steps:
                    self.save_checkpoint(elapsed=self._clock() - t0)
            result.status, result.stop_reason = status, reason
            result.end_step = self.step
            result.seconds = self._clock() - t0
            result.checkpoint = self.save_checkpoint(elapsed=result.seconds)
            if status != "interrupted":
                if cfg.evaluate and self.dataset and self.dataset.heldout and \
                        self.init_b is not None:
                    # both adapters in one pass: two slices of the same call (MP-LoRA)
                    result.heldout_start, result.heldout_final = self._heldout(
                        [self.init_b, self.lora_b.numpy()])
                result.data = self.dataset.stats.as_dict() if self.dataset else {}
                result.adapter_dir = self.save_adapter(result)
            return result
        finally:
            restore()

    def _one_step(self) -> dict[str, Any]:
        cfg = self.config
        assert self.program is not None and self.lora_b is not None and self._stream is not None
        t = self.step
        t_start = time.perf_counter()
        tokens, mask = self._stream.batch_at(t)
        # the schedule runs across runs: this run's step t is schedule step offset + t
        lr = zo.learning_rate(cfg.schedule_offset + t, base_lr=cfg.lr, total_steps=cfg.horizon,
                              schedule=cfg.lr_schedule, warmup_steps=cfg.warmup_steps,
                              min_lr_ratio=cfg.min_lr_ratio)
        res = zo.zo_step(self.program, cfg.mode, self.lora_b, tokens, mask, run_seed=cfg.seed,
                         step=t, q=cfg.q, eps=cfg.eps, lr=lr, clip=cfg.clip or None,
                         buffers=self._buffers)
        self.lora_b = res.lora_b
        self.step = t + 1
        metrics = {
            "step": self.step, "loss": res.estimate.loss,
            "projected_grads": list(res.projected_grads), "lr": lr,
            "seconds": time.perf_counter() - t_start,
            "loss_plus": list(res.estimate.loss_plus), "loss_minus": list(res.estimate.loss_minus),
            "epoch": self._stream.cursor(t)[0],
        }
        self._emit(metrics)
        return metrics

    def _emit(self, metrics: dict[str, Any]) -> None:
        if self.config.metrics is not None:
            self.config.metrics.parent.mkdir(parents=True, exist_ok=True)
            with self.config.metrics.open("a") as fh:
                fh.write(json.dumps(metrics) + "\n")
        if self._on_step is not None:
            self._on_step(metrics)

    def _stop_reason(self, start_step: int, t0: float) -> str:
        cfg = self.config
        if self._signal:
            return f"signal {self._signal}"
        if self._should_stop():
            return "stop requested"
        if cfg.burst_steps is not None and self.step - start_step >= cfg.burst_steps:
            return "burst_steps"
        if cfg.max_seconds is not None and self._clock() - t0 >= cfg.max_seconds:
            return "max_seconds"
        return ""

    def _heldout(self, adapters: list[np.ndarray]) -> list[float]:
        assert self.program is not None and self.dataset is not None and self.manifest
        return heldout_losses(self.program, self.dataset.heldout, adapters,
                              pad_id=self.manifest.tokenizer.pad_token_id)

    def _install_signal_handlers(self) -> Callable[[], None]:
        if not self._handle_signals or threading.current_thread() is not threading.main_thread():
            return lambda: None

        def handler(signum: int, frame: FrameType | None) -> None:
            # Only set a flag: the step in flight finishes, then train() checkpoints and exits.
            self._signal = signal.Signals(signum).name

        old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}

        def restore() -> None:
            for s, h in old.items():
                signal.signal(s, h)

        return restore

    def request_stop(self, why: str = "signal SIGTERM") -> None:
        """Ask the loop to stop after the current step (what the signal handler does)."""
        self._signal = why.removeprefix("signal ")

    # ------------------------------------------------------------ persistence
    def save_checkpoint(self, elapsed: float = 0.0) -> Path:
        """Write the current B and step atomically (two generations kept)."""
        assert self.lora_b is not None and self.dataset is not None and self._stream is not None
        epoch, pos = self._stream.cursor(self.step)
        state = ckpt_mod.CheckpointState(
            step=self.step, run_seed=self.config.seed, config_hash=self._config_hash,
            data_fingerprint=self.dataset.fingerprint,
            bundle_id=self.manifest.bundle_id if self.manifest else "", epoch=epoch,
            position=pos, seconds=self._seconds_before + elapsed)
        return ckpt_mod.save_checkpoint(self.config.checkpoint_path, state, self.lora_b.numpy())

    def save_adapter(self, result: TrainResult | None = None) -> Path:
        """Write the adapter (PEFT layout) atomically: temp dir, fsync, rename over ``out``."""
        from agent.io.adapter_fs import write_adapter
        from agent.io.atomic import replace_dir, staging_dir, write_synced

        assert self.lora_b is not None and self.manifest is not None
        out = self.config.out
        tmp = staging_dir(out)
        try:
            write_adapter(tmp, self._layout, self.lora_b.numpy(), self._a_tensors,
                          base_model=self.manifest.base.source)
            outcome = result.as_dict() if result else None
            if outcome is not None:
                outcome.pop("adapter_dir", None)
            summary = {
                "bundle_id": self.manifest.bundle_id, "steps": self.step,
                "config": json.loads(self.config.model_dump_json()), "result": outcome,
            }
            write_synced(tmp / METRICS_NAME,
                         json.dumps(summary, indent=2, default=str).encode())
            replace_dir(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return out

    def cleanup(self) -> None:
        """Release the program (its packed weights) and the data."""
        self.program = None
        self.dataset = None
        self._stream = None


def _pad_dataset(ds: Dataset, length: int, pad_id: int) -> Dataset:
    """Re-pad examples truncated to a shorter --max-length up to the program's length."""
    from agent.training.data import Example

    def pad(e: Example) -> Example:
        extra = length - e.tokens.shape[0]
        return Example(e.id, np.concatenate([e.tokens, np.full(extra, pad_id, np.int64)]),
                       np.concatenate([e.mask, np.zeros(extra, np.float32)]), e.truncated)

    return Dataset(tuple(map(pad, ds.train)), tuple(map(pad, ds.heldout)), ds.stats, length)


def run_training(config: TrainJob, **kwargs: Any) -> TrainResult:
    """setup → train → cleanup, the one-shot job."""
    recipe = ZOTrainRecipe(config, **kwargs)
    try:
        recipe.setup()
        return recipe.train()
    finally:
        recipe.cleanup()
