"""How deep a JSON document nests, measured on the raw bytes before anything parses it.

Python's ``json`` recurses once per ``[`` / ``{``: 60,000 nested brackets (60 KB, under any
payload limit) raise RecursionError from inside the decoder. A fleet message is bounded in
depth here first, by a flat scan that never recurses, so a parser only ever sees documents
whose depth is known to be small.
"""

from __future__ import annotations

_OPEN = frozenset(b"[{")
_CLOSE = frozenset(b"]}")
_QUOTE = ord('"')
_BACKSLASH = ord("\\")


def json_depth_exceeds(raw: bytes, limit: int) -> bool:
    """True when ``raw`` nests arrays/objects deeper than ``limit`` (strings are skipped).

    The scan is lexical and tolerant: it does not validate the JSON (the parser does that
    afterwards), it only guarantees the parser will not recurse more than ``limit`` levels.

    Args:
        raw: the message body (UTF-8 JSON, or anything).
        limit: the deepest nesting allowed (``{"a": [1]}`` is depth 2).
    """
    if len(raw) <= limit:
        return False  # fewer bytes than the limit cannot open more levels than it
    depth = 0
    in_string = False
    escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == _BACKSLASH:
                escaped = True
            elif byte == _QUOTE:
                in_string = False
        elif byte == _QUOTE:
            in_string = True
        elif byte in _OPEN:
            depth += 1
            if depth > limit:
                return True
        elif byte in _CLOSE:
            depth -= 1
    return False
