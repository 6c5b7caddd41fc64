"""The eager twin of the train program, with gradients: first-order LoRA and logits.

Built from exporter.model's ``TrainForward`` (the module the train program is exported from,
proved equal to it by the exporter's parity tests), so the first-order baseline optimises the
very loss the ZO methods estimate: B trainable, A frozen, same masking and mean. It also
gives per-position logits, which the train program keeps inside the runtime, for the
teacher-forced argmax match.

A bundle with a quantized base (``manifest.quantize``) gets its eager twin quantized the same
way (exporter/quantize.py), so the argmax match scores the model the programs run. torchao's
quantized linears pass no gradient to their input, so backpropagation through such a base
would silently drop every gradient path through a base linear: ``differentiable`` is False
then, ``loss`` refuses, and the benchmark skips the first-order baseline.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from agent.core.bundle import BundleManifest, lora_layout_of
from agent.training.data import Example, collate
from exporter.model import TrainForward


class EagerModel:
    """The bundle's decoder in eager PyTorch (base frozen; LoRA-B is an argument).

    Args:
        bundle_dir: the bundle.
        manifest: its manifest.
        workdir: scratch space for rebuilding the starter checkpoint (removed on close).

    Raises:
        BundleError: the base checkpoint cannot be rebuilt or does not match the bundle.
    """

    def __init__(self, bundle_dir: Path, manifest: BundleManifest) -> None:
        from exporter.model import Decoder
        from exporter.quantize import quantize_base
        from exporter.reference import load_base_model, load_lora_a

        layout = lora_layout_of(manifest)
        with tempfile.TemporaryDirectory(prefix="mobizo-learn-") as tmp:
            hf = load_base_model(manifest, workdir=Path(tmp))
        self.core = Decoder(hf, layout, load_lora_a(Path(bundle_dir), layout))
        for p in self.core.parameters():
            p.requires_grad_(False)
        self.scheme = manifest.quantize
        quantize_base(self.core, self.scheme)  # no-op for 'none'
        self.max_length = manifest.train.max_length
        self._fwd: dict[int, TrainForward] = {}

    @property
    def differentiable(self) -> bool:
        """Whether autograd reaches every LoRA term (False on a quantized base)."""
        return self.scheme == "none"

    def forward_for(self, batch: int) -> TrainForward:
        """``TrainForward`` with one slice and ``batch`` rows (cached per batch)."""
        if batch not in self._fwd:
            self._fwd[batch] = TrainForward(self.core, slices=1, batch=batch,
                                            max_length=self.max_length)
        return self._fwd[batch]

    def loss(self, tokens: Tensor, mask: Tensor, lora_b: Tensor) -> Tensor:
        """Mean CE over the masked targets (differentiable in ``lora_b`` [1, P]).

        Raises:
            ValueError: the base is quantized (its gradients would be silently wrong).
        """
        if not self.differentiable:
            raise ValueError(f"the first-order baseline needs an fp32 base; this bundle's base "
                             f"is quantized ({self.scheme}) and torchao's quantized linears "
                             "pass no gradient to their input")
        return self.forward_for(tokens.shape[0])(tokens, mask, lora_b)[0]

    @torch.no_grad()
    def argmax_match(self, examples: Sequence[Example], lora_b: np.ndarray | Tensor,
                     chunk: int = 16) -> tuple[float, float]:
        """Teacher-forced greedy match on the response tokens: (exact-match, token accuracy).

        At each response position the argmax next token is compared with the reference,
        feeding the reference as context. All positions matching is exactly the condition for
        greedy decoding to reproduce the whole reply (EOS included), so the first number is
        the greedy exact-match rate.
        """
        row = torch.as_tensor(np.asarray(lora_b), dtype=torch.float32).reshape(1, -1)
        exact = tok_ok = tok_all = 0
        for start in range(0, len(examples), chunk):
            part = list(examples[start: start + chunk])
            tokens, mask = collate(part)
            fwd = self.forward_for(len(part))
            h = fwd.hidden(tokens, row)[:, :-1]
            pred = self.core.lm_head(h).argmax(dim=-1)  # [n, T-1] predicts tokens 1..T-1
            target, m = tokens[:, 1:], mask[:, 1:] > 0
            ok = (pred == target) & m
            tok_ok += int(ok.sum())
            tok_all += int(m.sum())
            exact += int(((ok | ~m).all(dim=1)).sum())
        n = max(1, len(examples))
        return exact / n, tok_ok / max(1, tok_all)
