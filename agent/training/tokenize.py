"""The bundle's tokenizer for the trainer, and the prompt format it shares with the service.

Prompt and response token ids come from agent/core/prompt_format.py, the one module the
inference service formats its prompts with too (its docstring has the rules); the functions
here are the trainer's short names for them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from agent.core.prompt_format import (
    FALLBACK_ASSISTANT_PREFIX,
    Message,
    PromptFormat,
    Tokenizer,
)
from agent.errors import BundleError

__all__ = ["FALLBACK_ASSISTANT_PREFIX", "Message", "PromptFormat", "Tokenizer",
           "has_chat_template", "load_tokenizer", "prompt_ids", "prompt_text", "response_ids"]


def load_tokenizer(bundle_dir: Path, subdir: str = "tokenizer") -> Tokenizer:
    """Load the bundle's tokenizer the way the service loads it
    (:func:`agent.io.bundle_tokenizer.load_bundle_tokenizer`: ``tokenizer.json`` and the chat
    template, no transformers), so both format prompts from the same object."""
    path = Path(bundle_dir) / subdir
    if not path.is_dir():
        raise BundleError(f"{path} is missing: the bundle has no tokenizer; re-export it")
    from agent.io.bundle_tokenizer import load_bundle_tokenizer

    return load_bundle_tokenizer(path)


def has_chat_template(tokenizer: Tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def prompt_text(tokenizer: Tokenizer, messages: Sequence[Message]) -> str:
    """The chat prompt as text, ending where the assistant's reply starts."""
    return PromptFormat(tokenizer).chat_text(messages)


def prompt_ids(tokenizer: Tokenizer, messages: Sequence[Message]) -> list[int]:
    """Token ids of a chat prompt (BOS included when the tokenizer has one and no template)."""
    return PromptFormat(tokenizer).chat_ids(messages)


def response_ids(tokenizer: Tokenizer, response: str) -> list[int]:
    """Token ids of a chat reply: its text, then the token that ends the turn."""
    return PromptFormat(tokenizer).response_ids(response)
