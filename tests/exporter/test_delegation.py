"""The train methods lower to one XNNPACK partition for the trunk (plus the final norm).

Every op XNNPACK does not take splits the graph: the partitions' inputs and outputs then go
through the ExecuTorch arena, and the op itself runs on the ~10x slower portable kernels
(shared/DESIGN.md §3). The fork of the first LoRA'd block once made it three (a `repeat`),
then five at b = 1 (a permuted tensor traced into RoPE's matmul became expand + bmm).
"""

from __future__ import annotations

import pytest

from exporter.checkpoint import inspect_checkpoint, load_model
from exporter.lora_init import init_lora_a
from exporter.lower import lower_methods
from exporter.model import Decoder, TrainForward, TrainMethod
from tests.exporter.test_model import _layout
from tests.exporter.tiny import make_tiny_checkpoint


@pytest.mark.parametrize(("layers", "batch"), [([0, 1], 1), ([0, 1], 2), ([1], 2)],
                         ids=["all-b1", "all-b2", "last-1-b2"])
def test_train_method_is_two_partitions(tmp_path, layers, batch):
    hf = load_model(inspect_checkpoint(make_tiny_checkpoint("llama", tmp_path / "ckpt")))
    layout = _layout(hf, layers)
    method = TrainMethod(TrainForward(Decoder(hf, layout, init_lora_a(layout, 0)), slices=4,
                                      batch=batch, max_length=16, max_targets=8))
    delegates = lower_methods({"train": (method, method.example_args(layout.num_params))},
                              tmp_path / "train.pte", backend="xnnpack")
    assert delegates == {"train": 2}
