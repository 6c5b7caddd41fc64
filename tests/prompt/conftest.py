"""Fixtures: the real Qwen3, Llama 3 and Gemma 3 tokenizers (tests/real_tokenizers.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.real_tokenizers import REAL_TOKENIZERS, real_tokenizer_dir


@pytest.fixture(scope="session")
def tokenizer_cache_dir(request: pytest.FixtureRequest,
                        tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = getattr(request.config, "cache", None)  # absent with -p no:cacheprovider
    if cache is None:
        return tmp_path_factory.mktemp("mobizo-tokenizers")
    return Path(cache.mkdir("mobizo-tokenizers"))


_LOADED: dict[str, Any] = {}


@pytest.fixture(scope="session", params=sorted(REAL_TOKENIZERS))
def real_tokenizer_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def real_tokenizer_path(real_tokenizer_name: str, tokenizer_cache_dir: Path) -> Path:
    """Directory of tokenizer.json, tokenizer_config.json and generation_config.json."""
    return real_tokenizer_dir(real_tokenizer_name, tokenizer_cache_dir)


@pytest.fixture(scope="session")
def real_tokenizer(real_tokenizer_name: str, real_tokenizer_path: Path) -> Any:
    """The real tokenizer, loaded once per session with transformers' AutoTokenizer."""
    if real_tokenizer_name not in _LOADED:
        from transformers import AutoTokenizer

        _LOADED[real_tokenizer_name] = AutoTokenizer.from_pretrained(str(real_tokenizer_path))
    return _LOADED[real_tokenizer_name]
