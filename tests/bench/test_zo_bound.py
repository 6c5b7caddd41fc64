"""``mobizo-bench zo``'s FLOP ratio for speedup_vs_mezo, on the 110M shape the issue names."""

from types import SimpleNamespace as NS

import pytest

from agent.bench.zo import bench_mask, response_targets, speedup_bound


def _manifest(layers, max_targets):
    model = NS(num_heads=12, head_dim=64, num_kv_heads=12, hidden_size=768,
               intermediate_size=2048, vocab_size=32000, num_layers=12)
    return NS(model=model, train=NS(max_length=128, max_targets=max_targets),
              lora=NS(layers=tuple(layers)))


def test_lora_on_every_layer_saves_only_the_first_blocks_qkv():
    # block 0's frozen q/k/v run once instead of 2q times: 7/8 of a quarter block of 12.75
    assert speedup_bound(_manifest(range(12), 127), q=4) == pytest.approx(1.014, abs=0.002)


def test_prefix_sharing_flop_ratio_is_capped_by_the_lm_head():
    # the head (32000 x 768) costs as much as 3.5 blocks and runs once per slice
    full = speedup_bound(_manifest(range(9, 12), 127), q=4)
    response = speedup_bound(_manifest(range(9, 12), 64), q=4)
    assert full == pytest.approx(2.10, abs=0.01)
    assert response == pytest.approx(2.43, abs=0.01)


def test_bench_mask_targets_fit_the_response_window():
    mask = bench_mask(2, 128)
    assert int(mask[0, 1:].sum()) == response_targets(128) == 64
