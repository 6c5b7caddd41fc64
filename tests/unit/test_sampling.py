"""Sampling and stop strings (pure)."""

from __future__ import annotations

import numpy as np
import pytest

from agent.services.inference.sampling import (
    Sampler,
    SamplingParams,
    StopScanner,
    choose_token,
    find_stop,
    logprobs_of,
    min_p_filter,
    nucleus,
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
    out = [scanner.feed(piece) for piece in ["Hel", "lo E", "N", "D more"]]
    assert "".join(out) == "Hello " and scanner.stopped
    assert out[1] == "lo "  # "E" held back until it is known not to start a stop


def test_stop_scanner_releases_false_alarm_and_waits_for_utf8() -> None:
    scanner = StopScanner(["END"])
    assert scanner.feed("a E") == "a "
    assert scanner.feed("x") == "Ex"
    assert scanner.feed("\ufffd") == ""  # held while it may be a character cut short
    assert scanner.feed("é") == "\ufffdé"
    assert scanner.finish("!") == "!"
    assert scanner.text == "a Ex\ufffdé!"


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


def _logits(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def test_repetition_penalty_divides_positive_and_multiplies_negative_in_window() -> None:
    # transformers' RepetitionPenaltyLogitsProcessor / llama.cpp's penalty_repeat
    s = Sampler(SamplingParams(repetition_penalty=2.0, penalty_last_n=2), prompt_ids=[0, 1, 2])
    out = s.processed(_logits(4.0, 4.0, -4.0, 4.0))
    assert out.tolist() == [4.0, 2.0, -8.0, 4.0]  # only the last 2 ids (1, 2) count
    s.accept(3)  # the window slides: now (2, 3)
    assert s.processed(_logits(4.0, 4.0, -4.0, 4.0)).tolist() == [4.0, 4.0, -8.0, 2.0]


def test_presence_and_frequency_penalties_count_generated_tokens_only() -> None:
    # OpenAI: mu[j] -= c[j] * frequency_penalty + float(c[j] > 0) * presence_penalty
    s = Sampler(SamplingParams(presence_penalty=0.5, frequency_penalty=0.25), prompt_ids=[0])
    for t in (1, 1, 2):
        s.accept(t)
    out = s.processed(_logits(1.0, 1.0, 1.0, 1.0))
    assert np.allclose(out, [1.0, 1.0 - 0.5 - 0.5, 1.0 - 0.25 - 0.5, 1.0])


def test_logit_bias_adds_before_penalties_and_forces_greedy() -> None:
    s = Sampler(SamplingParams(temperature=0, logit_bias=((2, 100.0), (0, -100.0))))
    tok, lp = s.next(_logits(5.0, 1.0, 0.0))
    assert tok == 2 and lp is None
    both = Sampler(SamplingParams(logit_bias=((0, 2.0),), repetition_penalty=4.0),
                   prompt_ids=[0])
    assert both.processed(_logits(2.0, 0.0)).tolist() == [1.0, 0.0]  # (2 + 2) / 4


def test_untouched_logits_are_not_copied() -> None:
    x = _logits(1.0, 2.0)
    assert np.shares_memory(Sampler(SamplingParams()).processed(x), x)


def test_min_p_drops_tokens_under_a_fraction_of_the_top() -> None:
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    assert np.allclose(min_p_filter(probs, 0.5), [0.5 / 0.8, 0.3 / 0.8, 0, 0])
    rng = np.random.default_rng(0)
    params = SamplingParams(temperature=1.0, min_p=0.5)
    draws = {choose_token(np.log(probs), params, rng) for _ in range(300)}
    assert draws == {0, 1}


def test_logprobs_are_log_softmax_with_sorted_alternatives() -> None:
    logits = np.random.default_rng(5).standard_normal(100).astype(np.float32)
    s = Sampler(SamplingParams(temperature=0, logprobs=4))
    tok, lp = s.next(logits)
    ref = logits.astype(np.float64) - np.log(np.sum(np.exp(logits.astype(np.float64))))
    assert lp is not None and tok == int(np.argmax(logits))
    assert lp.logprob == pytest.approx(ref[tok], abs=1e-5)
    assert [t for t, _ in lp.top] == list(np.argsort(-ref)[:4])
    assert [v for _, v in lp.top] == pytest.approx(sorted(ref, reverse=True)[:4], abs=1e-5)
    none = logprobs_of(logits, 7, 0)
    assert none.top == () and none.logprob == pytest.approx(ref[7], abs=1e-5)


def test_top_k_candidates_map_back_to_vocabulary_ids() -> None:
    logits = np.full(1000, -5.0)
    logits[[10, 500, 900]] = [3.0, 2.9, 2.8]
    rng = np.random.default_rng(2)
    draws = {choose_token(logits, SamplingParams(temperature=1.0, top_k=3), rng)
             for _ in range(300)}
    assert draws == {10, 500, 900}


def test_stop_string_straddling_three_pieces_and_overlapping_prefix() -> None:
    scanner = StopScanner(["<|end|>"])
    out = [scanner.feed(p) for p in ["ok <", "|en", "d|> tail"]]
    assert "".join(out) == "ok " and scanner.stopped and scanner.text == "ok "
    overlap = StopScanner(["aab"])  # "a" then "aab": the held "a" starts no match
    assert overlap.feed("xa") == "x"
    assert overlap.feed("a") == ""
    assert overlap.feed("ab!") == "a" and overlap.stopped


def test_stop_string_completed_by_the_decoder_flush() -> None:
    scanner = StopScanner(["END"])
    assert scanner.feed("done E") == "done "
    assert scanner.finish("ND") == "" and scanner.stopped and scanner.text == "done "


def test_nucleus_equals_the_full_sort_filter() -> None:
    rng = np.random.default_rng(4)
    for scale in (0.1, 1.0, 8.0):  # flat (widens to a full sort) to peaked (first cut)
        probs = np.exp(rng.standard_normal(5000) * scale)
        probs /= probs.sum()
        for top_p in (0.1, 0.5, 0.95):
            ids, kept = nucleus(probs, top_p, first=16)
            full = top_p_filter(probs, top_p)
            assert sorted(ids.tolist()) == np.flatnonzero(full).tolist()
            assert np.allclose(kept, full[ids])


class _OnlyEven:
    """A grammar that allows even token ids and is complete after three tokens."""

    def __init__(self, vocab: int) -> None:
        self.mask = np.arange(vocab) % 2 == 0
        self.seen: list[int] = []

    def allowed(self) -> np.ndarray:
        return self.mask

    def accept(self, token: int) -> None:
        self.seen.append(token)

    @property
    def done(self) -> bool:
        return len(self.seen) >= 3


def test_constraint_masks_tokens_for_greedy_sampling_and_logprobs() -> None:
    logits = np.array([0.0, 9.0, 1.0, 8.0, 2.0], dtype=np.float32)
    grammar = _OnlyEven(5)
    s = Sampler(SamplingParams(temperature=0, logprobs=5), constraint=grammar)
    tok, lp = s.next(logits)
    assert tok == 4 and lp is not None
    assert [t for t, _ in lp.top] == [4, 2, 0]  # masked tokens are not alternatives
    sampled = Sampler(SamplingParams(temperature=2.0, seed=1), constraint=grammar)
    assert all(sampled.next(logits)[0] % 2 == 0 for _ in range(50))
    for t in (4, 2):
        s.accept(t)
    assert not s.done
    s.accept(0)
    assert s.done and grammar.seen[-3:] == [4, 2, 0]
