"""Constrained decoding for ``response_format`` JSON: llguidance token masks per step.

``response_format: {"type": "json_schema", "json_schema": {"schema": ...}}`` (and
``json_object``, the schema ``{"type": "object"}``) must give JSON that parses and matches,
not a hope that the model writes it. llguidance (guidance-ai/llguidance, the Rust engine
behind llama.cpp's ``--llguidance`` build, vLLM's and SGLang's guided decoding) compiles a
JSON schema to a grammar and gives, per step, the set of token ids that keep the output a
prefix of a valid document; the sampler masks the others out (-inf) before it picks, so
greedy and sampled outputs both stay in the grammar. Once the document is complete, only
end-of-sequence is allowed and generation stops. Whitespace between tokens of the document
is not free (compact separators) unless the schema sets llguidance's ``x-guidance``.
llguidance ships abi3 wheels for x86_64 and aarch64 (manylinux_2_28) and needs no torch;
``mobizo-bench host`` measures what its mask costs per token.

It is an optional dependency (the ``json`` extra): without it a JSON ``response_format`` is
refused with 400 saying what to install. Pure of HTTP: the server checks a schema with
:meth:`JsonConstraints.check`, the generator builds a :class:`JsonConstraint` per request.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from typing import Any

import numpy as np


class ConstraintError(ValueError):
    """A schema llguidance cannot compile; the message says where."""


class ConstraintUnavailable(RuntimeError):
    """llguidance is not installed."""


def _llguidance() -> Any:
    try:
        import llguidance
        import llguidance.numpy
    except ImportError as exc:
        raise ConstraintUnavailable(
            "JSON output (response_format json_object / json_schema) needs llguidance: "
            "pip install 'mobizo-agent[json]'") from exc
    return llguidance


class JsonConstraint:
    """The token mask of one request's grammar, advanced token by token."""

    def __init__(self, matcher: Any, vocab_size: int) -> None:
        self._matcher = matcher
        self._vocab = vocab_size
        self._bits = _llguidance().numpy.allocate_token_bitmask(1, vocab_size)

    def allowed(self) -> np.ndarray:
        """Bool [vocab]: the tokens that keep the output in the grammar."""
        _llguidance().numpy.fill_next_token_bitmask(self._matcher, self._bits, 0)
        bits = np.unpackbits(self._bits.view(np.uint8), bitorder="little")
        return bits[: self._vocab].astype(bool)

    def accept(self, token: int) -> None:
        """Advance the grammar past ``token`` (one the mask allowed)."""
        self._matcher.consume_token(token)

    @property
    def done(self) -> bool:
        """The document is complete (only end-of-sequence may follow) or the grammar failed."""
        return bool(self._matcher.is_stopped())


class JsonConstraints:
    """Builds :class:`JsonConstraint` for one tokenizer (its llguidance view made once).

    Args:
        tokenizer: the bundle's tokenizer (``backend_tokenizer``: a ``tokenizers.Tokenizer``).
        vocab_size: token ids the program scores (may exceed the tokenizer's).
        eos_ids: the ids generation stops at (allowed once the document is complete).
    """

    def __init__(self, tokenizer: Any, vocab_size: int, eos_ids: Iterable[int]) -> None:
        self._hf = tokenizer
        self._vocab = vocab_size
        self._eos = sorted(eos_ids)
        self._lock = threading.Lock()
        self._tokenizer: Any = None

    def _ll_tokenizer(self) -> Any:
        with self._lock:  # built on first use: a large vocabulary takes a moment
            if self._tokenizer is None:
                backend = getattr(self._hf, "backend_tokenizer", None)
                if backend is None:
                    raise ConstraintUnavailable("JSON output needs the tokenizer's "
                                                "tokenizer.json (a fast tokenizer)")
                self._tokenizer = self._make(backend.to_str())
            return self._tokenizer

    def _make(self, tokenizer_json: str) -> Any:
        make = _llguidance().LLTokenizer
        try:  # every stop id may end the document (llguidance >= 1.7 takes a list)
            return make(tokenizer_json, n_vocab=self._vocab, eos_token=self._eos or None)
        except TypeError:  # older: one id; the generator stops once the document is complete
            return make(tokenizer_json, n_vocab=self._vocab,
                        eos_token=self._eos[0] if self._eos else None)

    def _matcher(self, schema: str) -> Any:
        ll = _llguidance()
        try:
            doc = json.loads(schema)
            if isinstance(doc, dict) and "x-guidance" not in doc:
                # compact separators, no free whitespace: a small model left to choose
                # whitespace can loop on it until max_tokens (llama.cpp caps it too)
                doc = {**doc, "x-guidance": {"whitespace_flexible": False}}
            grammar = ll.LLMatcher.grammar_from_json_schema(doc)
        except (ValueError, TypeError) as exc:
            raise ConstraintError(f"the JSON schema does not compile: {exc}") from exc
        matcher = ll.LLMatcher(self._ll_tokenizer(), grammar)
        if error := matcher.get_error():
            raise ConstraintError(f"the JSON schema does not compile: {error}")
        return matcher

    def check(self, schema: str) -> None:
        """Raise :class:`ConstraintError` (or :class:`ConstraintUnavailable`) for ``schema``."""
        self._matcher(schema)

    def for_schema(self, schema: str) -> JsonConstraint:
        """A fresh constraint for one request (``schema``: JSON text of a JSON schema)."""
        return JsonConstraint(self._matcher(schema), self._vocab)
