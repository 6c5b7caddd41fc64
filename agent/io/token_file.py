"""The bearer token of the local inference API: one secret in a 0600 file.

``mobizo-agent install`` writes it (owned by the service user); the service creates it at its
first start when it is missing (:func:`ensure_token`); the daemon and the local clients read it
(:func:`read_token`). A file that others may read is refused, as ssh refuses a private key.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from agent.errors import MobizoError
from agent.io.atomic import atomic_write_bytes

MIN_TOKEN_CHARS = 16


class TokenFileError(MobizoError):
    """The token file is unusable: readable by others, empty, or not readable."""


def new_token() -> str:
    """A fresh token: 256 random bits, URL-safe text."""
    return secrets.token_urlsafe(32)


def read_token(path: Path) -> str | None:
    """The token in ``path``, or None when the file does not exist (yet).

    Raises:
        TokenFileError: the file is readable by group or others, too short, or unreadable.
    """
    try:
        st = os.stat(path)
        raw = Path(path).read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenFileError(f"cannot read the API token file {path}: {exc}") from exc
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise TokenFileError(f"the API token file {path} is readable by others "
                             f"(mode {st.st_mode & 0o777:04o}): run `chmod 600 {path}`")
    if len(raw) < MIN_TOKEN_CHARS:
        raise TokenFileError(f"the API token file {path} holds no token of at least "
                             f"{MIN_TOKEN_CHARS} characters: remove it and restart the "
                             "service to make a new one")
    return raw


def ensure_token(path: Path) -> str:
    """The token in ``path``, creating the file (mode 0600, atomically) when it is missing.

    Raises:
        TokenFileError: the existing file is unusable, or a new one cannot be written.
    """
    token = read_token(path)
    if token is not None:
        return token
    token = new_token()
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(Path(path), token.encode("ascii") + b"\n", mode=0o600)
    except OSError as exc:
        raise TokenFileError(f"cannot create the API token file {path}: {exc}") from exc
    return token
