"""Incremental detokenization: decode only the new tokens, keeping UTF-8 boundaries right.

Re-decoding the whole output for every token is quadratic in the reply's length. As Hugging
Face's ``TextStreamer`` and vLLM's ``detokenize_incrementally`` do, decode a short window: the
tokens since the last emitted piece, with the previous piece's tokens in front as context (a
tokenizer may render a token differently at the start of a text, e.g. SentencePiece's leading
space), and emit the difference. A window ending in U+FFFD is an incomplete multi-byte
character of a byte-level tokenizer: hold it back until the next token completes it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from agent.core.byte_level import byte_of_char

Decode = Callable[[Sequence[int]], str]


class IncrementalDecoder:
    """Text deltas of a growing token sequence; their concatenation is the full decode."""

    def __init__(self, decode: Decode) -> None:
        self._decode = decode
        self.ids: list[int] = []
        self._prefix = 0  # window start: context tokens already emitted
        self._read = 0  # tokens whose text is emitted

    def push(self, token: int) -> str:
        """Add ``token``; return the text it completes (maybe "", held back)."""
        self.ids.append(token)
        prefix_text = self._decode(self.ids[self._prefix:self._read])
        text = self._decode(self.ids[self._prefix:])
        pending = len(self.ids) - self._read
        # a UTF-8 character is at most 4 bytes, so at most 4 byte-level tokens: past that the
        # U+FFFD is invalid bytes that no next token completes (do not let the window grow)
        if len(text) <= len(prefix_text) or (text.endswith("\ufffd") and pending < 4):
            return ""
        self._prefix, self._read = self._read, len(self.ids)
        return text[len(prefix_text):]

    def flush(self) -> str:
        """Whatever is held back (an incomplete character decodes as U+FFFD, as in a full
        decode)."""
        prefix_text = self._decode(self.ids[self._prefix:self._read])
        text = self._decode(self.ids[self._prefix:])
        self._prefix = self._read = len(self.ids)
        return text[len(prefix_text):]


_BYTE_LEVEL = byte_of_char()
_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def token_bytes(tokenizer: Any, token: int) -> bytes:
    """The bytes ``token`` stands for in a Hugging Face tokenizer's vocabulary.

    A token that decodes to whole characters is its decoded text; otherwise the vocabulary
    string says: SentencePiece byte fallback ``<0xE2>``, or GPT-2 byte-level characters.
    Special tokens are their own text (``</s>``); an id outside the vocabulary is ``b""``.
    """
    text = str(tokenizer.decode([token], skip_special_tokens=False))
    if "\ufffd" not in text:
        return text.encode()
    convert = getattr(tokenizer, "convert_ids_to_tokens", None)
    name = convert(token) if convert is not None else None
    if not isinstance(name, str):
        return b""
    if (m := _BYTE_FALLBACK.fullmatch(name)) is not None:
        return bytes([int(m.group(1), 16)])
    if all(c in _BYTE_LEVEL for c in name):
        return bytes(_BYTE_LEVEL[c] for c in name)
    return name.replace("\u2581", " ").encode()
