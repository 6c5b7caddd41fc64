"""Turn a conversation into prompt / response token ids the way generation will see them.

The trainer and the inference service must agree on the prompt format, otherwise an adapter
learns responses to prompts it will never be shown. The rule:

- with a chat template (``tokenizer.chat_template``): the prompt is the template rendered with
  ``add_generation_prompt=True``; the response is the reply's tokens followed by EOS, exactly
  what generation produces after that prompt;
- without one (the starter's byte-level tokenizer): ``BOS`` then ``"{role}: {content}\\n"``
  per message, then ``"assistant: "``; the response is the reply's tokens and EOS.

Rendering to text and encoding with ``add_special_tokens=False`` is the form that works the
same across transformers 4.x and 5.x.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from agent.errors import BundleError

Message = tuple[str, str]  # (role, content)

FALLBACK_ASSISTANT_PREFIX = "assistant: "


class Tokenizer(Protocol):
    """The part of a Hugging Face tokenizer this module uses."""

    bos_token_id: int | None
    eos_token_id: int | None
    chat_template: Any

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...


def load_tokenizer(bundle_dir: Path, subdir: str = "tokenizer") -> Tokenizer:
    """Load the bundle's tokenizer with ``transformers.AutoTokenizer`` (local files only)."""
    path = Path(bundle_dir) / subdir
    if not path.is_dir():
        raise BundleError(f"{path} is missing: the bundle has no tokenizer; re-export it")
    from transformers import AutoTokenizer  # heavy import, only when a job needs it

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)  # type: ignore[no-any-return]
    except Exception as exc:  # transformers raises many types for a bad directory
        raise BundleError(f"cannot load the tokenizer in {path}: {exc}; re-export the bundle")\
            from exc


def has_chat_template(tokenizer: Tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def prompt_text(tokenizer: Tokenizer, messages: Sequence[Message]) -> str:
    """The prompt as text, ending where the assistant's reply starts."""
    if has_chat_template(tokenizer):
        conv = [{"role": r, "content": c} for r, c in messages]
        text = tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
        return str(text)
    body = "".join(f"{role}: {content}\n" for role, content in messages)
    return body + FALLBACK_ASSISTANT_PREFIX


def prompt_ids(tokenizer: Tokenizer, messages: Sequence[Message]) -> list[int]:
    """Token ids of the prompt (BOS included when the tokenizer has one and no template)."""
    ids = list(tokenizer.encode(prompt_text(tokenizer, messages), add_special_tokens=False))
    if not has_chat_template(tokenizer) and tokenizer.bos_token_id is not None:
        ids.insert(0, int(tokenizer.bos_token_id))
    return ids


def response_ids(tokenizer: Tokenizer, response: str) -> list[int]:
    """Token ids of a reply: its text, then EOS so the model learns to stop."""
    ids = list(tokenizer.encode(response, add_special_tokens=False))
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    return ids
