"""Eager PyTorch references: what the exported programs must agree with.

- :func:`hf_losses`: transformers' own model with the LoRA merged into the weights, one slice
  at a time (the independent reference the parity tests use).
- :class:`EagerTrainProgram`: the export-friendly decoder (exporter/model.py) run eagerly, with
  the call signature of ``agent.io.runtime.TrainProgram.losses``; the trainer's ``--backend
  eager`` and the benchmark's ``t_eager`` use it.
- :func:`merged_model` / :func:`eager_generate`: generation with transformers and the adapter
  merged, for parity tests and the serve benchmark.

The base weights are rebuilt from the bundle's source (the starter preset is regenerated from
its seed; a checkpoint is re-read from its directory) and checked against the manifest's hash.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from agent.core.bundle import ADAPTER_DIR, BundleManifest, lora_layout_of
from agent.core.lora_layout import LoraLayout
from agent.errors import BundleError
from agent.io.bundle_files import read_manifest


def merged_state(hf_model: torch.nn.Module, layout: LoraLayout, lora_a: Mapping[str, Tensor],
                 lora_b_row: Tensor) -> dict[str, Tensor]:
    """Parameters of ``hf_model`` with ``W += scale · B·A`` for every LoRA'd linear."""
    params = dict(hf_model.named_parameters())
    out: dict[str, Tensor] = {}
    for e in layout:
        bt = lora_b_row[e.offset : e.offset + e.size].reshape(e.rank, e.out_features)
        key = f"{e.module_path}.weight"
        out[key] = params[key] + layout.scaling * (bt.T @ lora_a[e.peft_a_key])
    return out


def ce_losses_from_logits(logits: Tensor, tokens: Tensor, loss_mask: Tensor) -> Tensor:
    """Mean CE over masked targets (mask[:, t] marks token t, predicted at t-1) → scalar."""
    logp = torch.log_softmax(logits[:, :-1].double(), dim=-1)
    nll = -logp.gather(2, tokens[:, 1:].unsqueeze(2)).squeeze(2)
    mask = loss_mask[:, 1:].double()
    return (nll * mask).sum() / mask.sum().clamp_min(1.0)


@torch.no_grad()
def hf_losses(hf_model: torch.nn.Module, layout: LoraLayout, lora_a: Mapping[str, Tensor],
              tokens: Tensor, loss_mask: Tensor, lora_b: Tensor) -> Tensor:
    """Per-slice losses [S] from transformers' model with each slice's LoRA merged in."""
    out = []
    for row in lora_b:
        params = merged_state(hf_model, layout, lora_a, row)
        logits = torch.func.functional_call(hf_model, params, (tokens,), strict=False).logits
        out.append(ce_losses_from_logits(logits, tokens, loss_mask))
    return torch.stack(out).to(torch.float32)


def load_lora_a(bundle_dir: Path, layout: LoraLayout) -> dict[str, Tensor]:
    """The frozen A tensors of a bundle's initial adapter."""
    from safetensors.torch import load_file

    tensors = load_file(str(Path(bundle_dir) / ADAPTER_DIR / "adapter_model.safetensors"))
    return {e.peft_a_key: tensors[e.peft_a_key].to(torch.float32) for e in layout}


def load_base_model(manifest: BundleManifest, workdir: Path | None = None) -> torch.nn.Module:
    """transformers model of a bundle's base, rebuilt from its source and checked by hash."""
    from exporter.checkpoint import inspect_checkpoint, load_model
    from exporter.starter import make_starter_checkpoint

    source = manifest.base.source
    if source.startswith("preset:"):
        seed = int(source.rsplit("seed=", 1)[1]) if "seed=" in source else 0
        tmp = Path(tempfile.mkdtemp(dir=workdir))
        ckpt = inspect_checkpoint(make_starter_checkpoint(tmp / "ckpt", seed=seed))
    else:
        ckpt = inspect_checkpoint(Path(source))
    if ckpt.sha256() != manifest.base.sha256:
        raise BundleError(
            f"the base weights at {source} do not match the bundle (sha256 differs); the eager "
            "reference needs the exact checkpoint the bundle was exported from"
        )
    return load_model(ckpt)


class EagerTrainProgram:
    """Eager twin of ``agent.io.runtime.TrainProgram`` (same constructor and ``losses``)."""

    def __init__(self, bundle_dir: Path, *, slices: int, batch: int,
                 threads: int | None = None, hf_model: torch.nn.Module | None = None) -> None:
        from exporter.model import Decoder, TrainForward

        manifest = read_manifest(Path(bundle_dir))
        layout = lora_layout_of(manifest)
        if threads:
            torch.set_num_threads(threads)
        hf = hf_model if hf_model is not None else load_base_model(manifest)
        self.slices, self.batch = slices, batch
        self.max_length = manifest.train.max_length
        core = Decoder(hf, layout, load_lora_a(Path(bundle_dir), layout))
        self._fwd = TrainForward(core, slices=slices, batch=batch, max_length=self.max_length,
                                 max_targets=manifest.train.max_targets)

    @torch.no_grad()
    def losses(self, tokens: Tensor, loss_mask: Tensor, lora_b: Tensor) -> Tensor:
        tokens = torch.as_tensor(tokens, dtype=torch.long)
        loss_mask = torch.as_tensor(loss_mask, dtype=torch.float32)
        if tokens.shape[0] != self.batch or tokens.shape[1] > self.max_length:
            raise ValueError(f"expected tokens [{self.batch}, <= {self.max_length}], "
                             f"got {tuple(tokens.shape)}")
        pad = self.max_length - tokens.shape[1]  # right-pad exactly like the runtime adapter
        tokens = torch.nn.functional.pad(tokens, (0, pad))
        loss_mask = torch.nn.functional.pad(loss_mask, (0, pad))
        return self._fwd(tokens, loss_mask, torch.as_tensor(lora_b, dtype=torch.float32))


def merged_model(hf_model: torch.nn.Module, layout: LoraLayout, lora_a: Mapping[str, Tensor],
                 lora_b_row: np.ndarray | Tensor) -> torch.nn.Module:
    """A copy of ``hf_model`` with one adapter merged into its weights."""
    import copy

    model = copy.deepcopy(hf_model)
    row = torch.as_tensor(np.asarray(lora_b_row), dtype=torch.float32).reshape(-1)
    with torch.no_grad():
        for name, value in merged_state(model, layout, lora_a, row).items():
            model.get_parameter(name).copy_(value)
    return model.eval()


@torch.no_grad()
def eager_generate(model: torch.nn.Module, prompt_ids: Sequence[int], max_new_tokens: int,
                   ) -> list[int]:
    """Greedy generation with transformers (KV cache on); returns only the new token ids."""
    ids = torch.tensor([list(prompt_ids)], dtype=torch.long)
    out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                         attention_mask=torch.ones_like(ids), pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()
