"""Sampling and stop strings (pure)."""

from __future__ import annotations

import numpy as np

from agent.services.inference.sampling import (
    SamplingParams,
    StopScanner,
    choose_token,
    find_stop,
    safe_prefix_len,
    top_p_filter,
)


def test_greedy_is_argmax() -> None:
    logits = np.array([0.1, 3.0, -1.0, 2.9], np.float32)
    rng = np.random.default_rng(0)
    assert choose_token(logits, SamplingParams(temperature=0), rng) == 1


def test_temperature_sampling_matches_softmax() -> None:
    logits = np.log(np.array([0.5, 0.3, 0.2]))
    rng = np.random.default_rng(0)
    draws = [choose_token(logits, SamplingParams(temperature=1.0), rng) for _ in range(6000)]
    freq = np.bincount(draws, minlength=3) / len(draws)
    assert np.allclose(freq, [0.5, 0.3, 0.2], atol=0.03)


def test_low_temperature_sharpens() -> None:
    logits = np.log(np.array([0.5, 0.3, 0.2]))
    rng = np.random.default_rng(1)
    draws = [choose_token(logits, SamplingParams(temperature=0.1), rng) for _ in range(500)]
    assert np.mean(np.array(draws) == 0) > 0.95


def test_top_p_keeps_smallest_nucleus() -> None:
    probs = np.array([0.1, 0.5, 0.25, 0.15])
    assert np.allclose(top_p_filter(probs, 0.6), [0, 0.5 / 0.75, 0.25 / 0.75, 0])
    assert np.allclose(top_p_filter(probs, 0.5), [0, 1, 0, 0])
    assert np.allclose(top_p_filter(probs, 1.0), probs)
    rng = np.random.default_rng(0)
    params = SamplingParams(temperature=1.0, top_p=0.5)
    assert {choose_token(np.log(probs), params, rng) for _ in range(200)} == {1}


def test_seeded_sampling_is_reproducible() -> None:
    logits = np.random.default_rng(3).standard_normal(50)
    p = SamplingParams(temperature=0.8, top_p=0.9)
    a = [choose_token(logits, p, np.random.default_rng(7)) for _ in range(5)]
    b = [choose_token(logits, p, np.random.default_rng(7)) for _ in range(5)]
    assert a == b


def test_stop_helpers() -> None:
    assert find_stop("hello world", ["wor", "lo"]) == 3
    assert find_stop("hello", ["x"]) is None
    assert safe_prefix_len("abc</", ["</s>"]) == 3
    assert safe_prefix_len("abc", ["</s>"]) == 3


def test_stop_scanner_streams_without_leaking_stop() -> None:
    scanner = StopScanner(["END"])
    text, out = "", []
    for piece in ["Hel", "lo E", "N", "D more"]:
        text += piece
        out.append(scanner.feed(text))
    assert "".join(out) == "Hello " and scanner.stopped
    assert out[1] == "lo "  # "E" held back until it is known not to start a stop


def test_stop_scanner_releases_false_alarm_and_waits_for_utf8() -> None:
    scanner = StopScanner(["END"])
    assert scanner.feed("a E") == "a "
    assert scanner.feed("a Ex") == "Ex"
    assert scanner.feed("a Ex\ufffd") == ""
    assert scanner.feed("a Exé") == "é"
    assert scanner.finish("a Exé!") == "!"


def test_top_k_keeps_only_the_k_likeliest() -> None:
    logits = np.log(np.array([0.4, 0.3, 0.2, 0.1]))
    rng = np.random.default_rng(0)
    params = SamplingParams(temperature=1.0, top_k=2)
    draws = [choose_token(logits, params, rng) for _ in range(4000)]
    freq = np.bincount(draws, minlength=4) / len(draws)
    assert freq[2] == freq[3] == 0
    assert np.allclose(freq[:2], [0.4 / 0.7, 0.3 / 0.7], atol=0.03)
    off = SamplingParams(temperature=1.0, top_k=0)  # 0: no cut
    assert len({choose_token(logits, off, rng) for _ in range(400)}) == 4
