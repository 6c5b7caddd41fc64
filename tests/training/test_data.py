"""Interaction data: parsing, feedback, masking, truncation, split, batching."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from agent.errors import DataError
from agent.training import data as D
from agent.training.tokenize import prompt_ids, prompt_text, response_ids


def _write(path: Path, rows: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_parse_forms_and_feedback():
    p = D.parse_interaction({"prompt": "hi", "response": "yo"}, 1)
    assert p is not None and p.messages == (("user", "hi"),) and p.target == "yo"
    assert D.parse_interaction({"prompt": "hi", "response": "yo", "feedback": "down"}, 1) is None
    c = D.parse_interaction({"prompt": "hi", "response": "yo", "feedback": "down",
                             "correction": "hello"}, 1)
    assert c is not None and c.target == "hello"
    m = D.parse_interaction({"messages": [{"role": "system", "content": "be brief"},
                                          {"role": "user", "content": "q"},
                                          {"role": "assistant", "content": "a"}]}, 1)
    assert m is not None and m.messages == (("system", "be brief"), ("user", "q"))
    assert m.target == "a"
    for bad in ([1], {"prompt": 3, "response": "x"}, {"response": "x"},
                {"prompt": "x", "response": "y", "feedback": "meh"},
                {"messages": [{"role": "user", "content": "q"}]},
                {"messages": [{"role": "assistant", "content": "a"}]}):
        with pytest.raises(D.MalformedLine):
            D.parse_interaction(bad, 1)


def test_mask_covers_response_only(byte_tokenizer):
    msgs = (("user", "abc"),)
    p = prompt_ids(byte_tokenizer, msgs)
    r = response_ids(byte_tokenizer, "xyz")
    assert p[0] == byte_tokenizer.bos_token_id and r[-1] == byte_tokenizer.eos_token_id
    assert prompt_text(byte_tokenizer, msgs) == "user: abc\nassistant: "
    tokens, mask, truncated = D.pack(p, r, 64, 0, 1)
    assert not truncated
    assert mask.sum() == len(r) == 4
    start = len(p)
    assert list(tokens[start:start + 4]) == r
    assert mask[:start].sum() == 0 and mask[start + 4:].sum() == 0
    assert (tokens[start + 4:] == 0).all()


def test_chat_template_is_used(chat_tokenizer):
    text = prompt_text(chat_tokenizer, (("user", "hi"),))
    assert text == "<|user|>hi\n<|assistant|>"
    ids = prompt_ids(chat_tokenizer, (("user", "hi"),))
    assert chat_tokenizer.decode(ids) == text


def test_truncation_cuts_prompt_left_first_then_response():
    bos = 1
    p = [bos] + list(range(10, 30))
    r = [50, 51, 52, 2]
    tokens, mask, truncated = D.pack(p, r, 10, 0, bos)
    assert truncated
    assert list(tokens) == [bos, 25, 26, 27, 28, 29, 50, 51, 52, 2]
    assert mask.sum() == 4
    # response longer than the window: one prompt token kept, response tail cut
    tokens, mask, _ = D.pack(p, list(range(60, 80)), 8, 0, bos)
    assert list(tokens) == [bos] + list(range(60, 67)) and mask.sum() == 7
    assert D.pack([], [5], 8, 0) is None  # only token sits at column 0: no target


def test_load_dataset_counts_and_warns(tmp_path, byte_tokenizer, caplog):
    rows = [
        {"prompt": "a", "response": "b"},
        "{not json",
        {"prompt": "a", "response": "b"},  # duplicate
        {"prompt": "c", "response": "d", "feedback": "down"},
        "",
        {"prompt": 1},
        {"prompt": "e", "response": "f", "feedback": "up"},
        {"prompt": "g", "response": "h", "correction": "i", "feedback": "down"},
    ]
    caplog.set_level(logging.WARNING)
    ds = D.load_dataset(_write(tmp_path / "d.jsonl", rows), byte_tokenizer, max_length=32,
                        pad_id=0, heldout_share=0.0)
    s = ds.stats
    assert (s.malformed, s.malformed_lines, s.duplicates, s.dropped_feedback, s.blank) == (
        2, [2, 6], 1, 1, 1)
    assert len(ds.train) == 3 and not ds.heldout
    assert "line 2" in caplog.text and "line 6" in caplog.text


def test_empty_dataset_is_an_error(tmp_path, byte_tokenizer):
    with pytest.raises(DataError, match="no usable training examples"):
        D.load_dataset(_write(tmp_path / "e.jsonl", ["{bad", {"prompt": "x", "response": "y",
                                                              "feedback": "down"}]),
                       byte_tokenizer, max_length=16, pad_id=0)
    with pytest.raises(DataError, match="does not exist"):
        D.load_dataset(tmp_path / "missing.jsonl", byte_tokenizer, max_length=16, pad_id=0)


def test_heldout_split_is_stable_and_nonempty(tmp_path, byte_tokenizer):
    rows = [{"prompt": f"p{i}", "response": f"r{i}"} for i in range(200)]
    a = D.load_dataset(_write(tmp_path / "a.jsonl", rows), byte_tokenizer, max_length=32,
                       pad_id=0, heldout_share=0.2)
    b = D.load_dataset(_write(tmp_path / "b.jsonl", rows[::-1] + rows[:50]), byte_tokenizer,
                       max_length=32, pad_id=0, heldout_share=0.2)
    assert {e.id for e in a.heldout} == {e.id for e in b.heldout}
    assert 20 < len(a.heldout) < 60
    tiny = D.load_dataset(_write(tmp_path / "t.jsonl", rows[:2]), byte_tokenizer,
                          max_length=32, pad_id=0, heldout_share=0.01)
    assert len(tiny.train) == 1 and len(tiny.heldout) == 1


def test_batches_are_deterministic_epoch_based(tmp_path, byte_tokenizer):
    rows = [{"prompt": f"p{i}", "response": f"r{i}"} for i in range(10)]
    ds = D.load_dataset(_write(tmp_path / "a.jsonl", rows), byte_tokenizer, max_length=16,
                        pad_id=0, heldout_share=0.0)
    s1, s2 = D.BatchStream(ds.train, 4, seed=3), D.BatchStream(ds.train, 4, seed=3)
    seq = [s1.indices(t) for t in range(5)]
    assert seq == [s2.indices(t) for t in range(5)]
    assert s2.indices(3) == D.BatchStream(ds.train, 4, seed=3).indices(3)  # random access
    flat = sum(seq, [])
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    assert flat[:10] != flat[10:20]  # a new order each epoch
    assert seq != [D.BatchStream(ds.train, 4, seed=4).indices(t) for t in range(5)]
    tokens, mask = s1.batch_at(0)
    assert tokens.shape == (4, 16) and str(tokens.dtype) == "torch.int64"
    assert mask.dtype.is_floating_point and np.all(mask.numpy()[:, 0] == 0)
    assert s1.cursor(3) == (1, 2)


def test_completion_rows_developer_and_content_parts() -> None:
    c = D.parse_interaction({"kind": "completion", "prompt": "Once upon", "response": " a time"},
                            1)
    assert c is not None and c.completion == "Once upon" and c.messages == ()
    assert c.id != D.parse_interaction({"prompt": "Once upon", "response": " a time"}, 1).id
    m = D.parse_interaction({"messages": [
        {"role": "developer", "content": "terse"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text",
                                                                     "text": "b"}]},
        {"role": "assistant", "content": "ok"}]}, 1)
    assert m is not None and m.messages == (("developer", "terse"), ("user", "a\nb"))
    for bad in ({"kind": "poem", "prompt": "x", "response": "y"},
                {"kind": "completion", "messages": [{"role": "user", "content": "q"},
                                                    {"role": "assistant", "content": "a"}]},
                {"messages": [{"role": "user", "content": [{"type": "image_url"}]},
                              {"role": "assistant", "content": "a"}]}):
        with pytest.raises(D.MalformedLine):
            D.parse_interaction(bad, 1)


def test_completion_is_prompted_raw(byte_tokenizer) -> None:
    stats = D.DataStats()
    lines = [json.dumps({"kind": "completion", "prompt": "abc", "response": "de"})]
    ds = D.build_dataset(D.read_interactions(lines, stats), byte_tokenizer, max_length=16,
                         pad_id=0, heldout_share=0.0, stats=stats)
    (ex,) = ds.train
    n = int(np.argmax(ex.mask))
    assert byte_tokenizer.decode(list(ex.tokens[:n])) == "abc"  # no "user: ", no template
    assert ex.n_targets == 3 and ex.tokens[n + 2] == byte_tokenizer.eos_token_id
