"""GPT-2's byte-level alphabet: the character a byte-level token string uses for each byte.

Printable bytes stand for themselves; the others are shifted past U+0100 (Radford et al. 2019,
``bytes_to_unicode`` in openai/gpt-2 ``encoder.py``). Byte-level BPE tokenizers (GPT-2, Llama
3, Qwen) spell their vocabularies in it; the detokenizer, the GGUF writer and the starter's
tokenizer all need its inverse.
"""

from __future__ import annotations

_PRINTABLE = frozenset([*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                        *range(ord("®"), ord("ÿ") + 1)])


def byte_of_char() -> dict[str, int]:
    """The inverse alphabet: a token string's character → the byte it stands for."""
    table, shift = {}, 0
    for b in range(256):
        if b in _PRINTABLE:
            table[chr(b)] = b
        else:
            table[chr(256 + shift)] = b
            shift += 1
    return table
