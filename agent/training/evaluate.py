"""Held-out loss of adapters: token-weighted mean CE over a dataset, through the runtime.

Several adapters are scored in one program call, one per slice (MP-LoRA makes that nearly as
cheap as scoring one); a partial last batch is padded with rows that have no target tokens,
which leaves the masked mean unchanged. The program returns the mean over the batch's target
tokens, so batches are combined weighted by their target-token counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agent.core import zo
from agent.training.data import Example, collate, padding_example


def heldout_losses(
    program: zo.LossFn,
    examples: Sequence[Example],
    adapters: Sequence[np.ndarray | torch.Tensor],
    *,
    pad_id: int = 0,
) -> list[float]:
    """Token-weighted mean loss of each adapter (flat LoRA-B [P]) over ``examples``.

    Returns NaN for each adapter when ``examples`` has no target token.
    """
    if not adapters:
        return []
    rows = [torch.as_tensor(np.asarray(a), dtype=torch.float32).reshape(-1) for a in adapters]
    s, b = program.slices, program.batch
    total = [0.0] * len(rows)
    weight = 0.0
    if not examples:
        return [float("nan")] * len(rows)
    length = int(examples[0].tokens.shape[0])
    for start in range(0, len(examples), b):
        chunk = list(examples[start: start + b])
        n_tok = float(sum(e.n_targets for e in chunk))
        if n_tok == 0:
            continue
        chunk += [padding_example(length, pad_id)] * (b - len(chunk))
        tokens, mask = collate(chunk)
        for g in range(0, len(rows), s):
            group = rows[g: g + s]
            stack = torch.stack(group + [group[0]] * (s - len(group)))
            out = program.losses(tokens, mask, stack).detach().to(torch.float64).reshape(-1)
            for k in range(len(group)):
                total[g + k] += float(out[k]) * n_tok
        weight += n_tok
    if weight == 0:
        return [float("nan")] * len(rows)
    return [t / weight for t in total]


def evaluate_adapters(
    bundle: Path,
    data: Path,
    adapters: Sequence[Path],
    *,
    split: str = "heldout",
    heldout_share: float = 0.1,
    backend: str = "executorch",
    threads: int | None = None,
    program: zo.LossFn | None = None,
) -> dict[str, Any]:
    """Mean held-out loss of each adapter directory on ``data`` (the daemon's eval gate).

    Args:
        bundle: the model bundle the adapters belong to.
        data: JSON Lines interactions, split exactly as the trainer splits them.
        adapters: PEFT adapter directories (validated against the bundle's LoRA-A).
        split: ``heldout`` (the trainer's held-out examples), ``train`` or ``all``.
        heldout_share: must equal the trainer's to get the same split.
        backend: ``executorch`` or ``eager``.
        threads: runtime threads.
        program: an already loaded program to use instead (any exported shape).

    Returns:
        ``{"losses": {adapter: loss}, "examples": n, "target_tokens": n, "split": ...}``.
    """
    from agent.errors import DataError
    from agent.io.adapter_fs import AdapterValidator
    from agent.io.bundle_files import read_manifest
    from agent.training.data import load_dataset
    from agent.training.programs import choose_eval_shape, load_program, size_runtime_threads
    from agent.training.tokenize import load_tokenizer

    if split not in ("heldout", "train", "all"):
        raise DataError(f"unknown split {split!r}; choose heldout, train or all")
    manifest = read_manifest(bundle)
    validator = AdapterValidator(bundle, manifest)
    flats = [validator.load_flat_b(a) for a in adapters]  # validate all before loading a program
    tokenizer = load_tokenizer(bundle, manifest.tokenizer.path)
    pad_id = manifest.tokenizer.pad_token_id
    ds = load_dataset(data, tokenizer, max_length=manifest.train.max_length, pad_id=pad_id,
                      heldout_share=0.0 if split == "all" else heldout_share)
    examples = {"heldout": ds.heldout, "train": ds.train, "all": ds.train}[split]
    if not examples:
        raise DataError(f"{data} has no {split} examples (held-out share {heldout_share}); "
                        "add interactions or use --split all")
    if program is None:
        shape = choose_eval_shape(manifest, len(flats))
        size_runtime_threads(backend, threads)  # [device] threads, before the program loads
        program = load_program(bundle, backend, shape.slices, shape.batch, threads)
    losses = heldout_losses(program, examples, flats, pad_id=pad_id)
    return {
        "bundle_id": manifest.bundle_id, "split": split, "examples": len(examples),
        "target_tokens": int(sum(e.n_targets for e in examples)),
        "program_shape": [program.slices, program.batch],
        "losses": {str(a): loss for a, loss in zip(adapters, losses, strict=True)},
    }
