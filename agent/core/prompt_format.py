"""One prompt format for serving and training: a conversation or a raw prompt → token ids.

The inference service (agent/services/inference/generation.py) and the trainer
(agent/training/data.py) both format prompts here, and the exporter checks a tokenizer here
before it writes a bundle, so an adapter learns replies to exactly the prompts the service
shows the model. The rules:

- **chat, with a chat template** (``chat_template`` in tokenizer_config.json): the template
  rendered with ``add_generation_prompt=True`` and encoded with ``add_special_tokens=False``
  (a template writes its own BOS: Llama 3's and Gemma 3's do, Qwen's has none);
- **chat, without one**: BOS (when the tokenizer has one), ``"{role}: {content}\\n"`` per
  message, then ``"assistant: "``;
- **completion** (``/v1/completions``; ``{"kind": "completion"}`` training rows): the prompt
  text as is, encoded the tokenizer's own way (``add_special_tokens=True``: Gemma adds BOS,
  Qwen adds nothing), without an EOS a tokenizer might append;
- **response** (what the trainer scores after the prompt): the reply's tokens, then the token
  generation stops at: for a chat with a template, the template's end-of-turn token when it is
  a special token (Llama 3 ``<|eot_id|>``, Qwen ``<|im_end|>``, Gemma ``<end_of_turn>``),
  otherwise EOS.

Roles: ``system``, ``developer`` (OpenAI's newer name for system, rendered as ``system``:
Qwen3's template silently drops roles it does not know and Gemma 3's raises on them),
``user``, ``assistant`` and ``tool``. Content is a string or OpenAI content parts of type
``text``, joined with newlines (as vLLM joins them); any other part type is refused naming
the field. Rendering to text, then encoding, is the form that works the same across
transformers 4.x and 5.x.

Pure: no I/O and no transformers import; the tokenizer is passed in (:class:`Tokenizer`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final, Protocol

Message = tuple[str, str]  # (role, content as text)

ROLES: Final[tuple[str, ...]] = ("system", "developer", "user", "assistant", "tool")
FALLBACK_ASSISTANT_PREFIX: Final = "assistant: "
# Roles rendered under another name: templates know "system", rarely "developer".
_TEMPLATE_ROLE: Final[dict[str, str]] = {"developer": "system"}
# A reply no template rewrites (no spaces to trim, no markup), to find what follows a reply.
_PROBE_REPLY: Final = "MobizoProbeReply7"
# What the export check renders: the least every template must handle.
_PROBE_CONVERSATION: Final[tuple[Message, ...]] = (("user", "Hello"),)


class Tokenizer(Protocol):
    """The part of a Hugging Face tokenizer this module uses."""

    bos_token_id: int | None
    eos_token_id: int | None
    chat_template: Any

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...


class PromptError(ValueError):
    """A conversation this format cannot turn into a prompt; ``field`` names the bad part."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def content_text(content: Any, where: str = "content") -> str:
    """A message's content as text: a string, or OpenAI text parts joined with newlines.

    Raises:
        PromptError: content of another type, or a part that is not ``{"type": "text"}``.
    """
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise PromptError(f"{where} must be a string or a list of text parts, got "
                          f"{type(content).__name__}", where)
    texts = []
    for k, part in enumerate(content):
        here = f"{where}[{k}]"
        if not isinstance(part, Mapping):
            raise PromptError(f"{here} must be an object like {{\"type\": \"text\", "
                              "\"text\": ...}", here)
        if part.get("type") != "text":
            raise PromptError(f"{here}.type is {part.get('type')!r}: this model reads text "
                              "only; send parts of type 'text'", f"{here}.type")
        if not isinstance(part.get("text"), str):
            raise PromptError(f"{here}.text must be a string", f"{here}.text")
        texts.append(part["text"])
    return "\n".join(texts)


def conversation(messages: Sequence[Any], where: str = "messages") -> tuple[Message, ...]:
    """OpenAI-style ``[{"role", "content"}, ...]`` → ``((role, text), ...)``, checked.

    Raises:
        PromptError: not a list of messages, an unknown role, or unreadable content.
    """
    out = []
    for k, m in enumerate(messages):
        here = f"{where}[{k}]"
        if not isinstance(m, Mapping):
            raise PromptError(f"{here} must be an object with 'role' and 'content'", here)
        role = m.get("role")
        if role not in ROLES:
            raise PromptError(f"{here}.role is {role!r}; use one of {', '.join(ROLES)}",
                              f"{here}.role")
        out.append((str(role), content_text(m.get("content"), f"{here}.content")))
    return tuple(out)


class PromptFormat:
    """The prompt and response token ids of one tokenizer (see the module rules).

    Args:
        tokenizer: a Hugging Face tokenizer (anything shaped like :class:`Tokenizer`).
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tok = tokenizer
        self.has_chat_template = bool(getattr(tokenizer, "chat_template", None))
        self.end_of_turn_id = self._end_of_turn() if self.has_chat_template else None
        # what the tokenizer wraps any text in (a BOS, rarely an EOS): seen on empty text
        wrap = tokenizer.encode("", add_special_tokens=True)
        self._appends_eos = bool(wrap) and self.eos_id is not None and wrap[-1] == self.eos_id

    @property
    def eos_id(self) -> int | None:
        eos = self.tok.eos_token_id
        return None if eos is None else int(eos)

    @property
    def stop_ids(self) -> frozenset[int]:
        """Token ids that end a reply: EOS and the template's end-of-turn token."""
        return frozenset(i for i in (self.eos_id, self.end_of_turn_id) if i is not None)

    def chat_text(self, messages: Sequence[Message]) -> str:
        """The chat prompt as text, ending where the assistant's reply starts.

        Raises:
            PromptError: the chat template refused the conversation (its message is kept).
        """
        if not self.has_chat_template:
            body = "".join(f"{role}: {content}\n" for role, content in messages)
            return body + FALLBACK_ASSISTANT_PREFIX
        return self._render(messages, add_generation_prompt=True)

    def chat_ids(self, messages: Sequence[Message]) -> list[int]:
        """Token ids of a chat prompt (BOS first when there is no template and one exists)."""
        ids = [int(i) for i in self.tok.encode(self.chat_text(messages),
                                               add_special_tokens=False)]
        bos = self.tok.bos_token_id
        if not self.has_chat_template and bos is not None:
            ids.insert(0, int(bos))
        return ids

    def completion_ids(self, prompt: str) -> list[int]:
        """Token ids of a raw completion prompt, encoded the tokenizer's own way."""
        ids = [int(i) for i in self.tok.encode(prompt, add_special_tokens=True)]
        if self._appends_eos and ids and ids[-1] == self.eos_id:
            ids.pop()  # an EOS after the prompt would end the text before the reply
        return ids

    def response_ids(self, reply: str, *, completion: bool = False) -> list[int]:
        """Token ids of a reply: its text, then the token generation stops at."""
        ids = [int(i) for i in self.tok.encode(reply, add_special_tokens=False)]
        end = self.eos_id if completion or self.end_of_turn_id is None else self.end_of_turn_id
        if end is not None:
            ids.append(end)
        return ids

    def check(self) -> None:
        """Refuse a tokenizer the service and the trainer could not use.

        Raises:
            PromptError: no EOS token (a reply could never end), or a chat template that
                raises on a one-message conversation.
        """
        if self.eos_id is None:
            raise PromptError("the tokenizer has no eos_token, so a reply could never end; set "
                              "\"eos_token\" in tokenizer_config.json to the token the model "
                              "ends its replies with", "eos_token")
        if self.has_chat_template:
            self.chat_ids(_PROBE_CONVERSATION)
            self._render((*_PROBE_CONVERSATION, ("assistant", _PROBE_REPLY)),
                         add_generation_prompt=False)

    def _render(self, messages: Sequence[Message], *, add_generation_prompt: bool) -> str:
        conv = [{"role": _TEMPLATE_ROLE.get(r, r), "content": c} for r, c in messages]
        try:
            text = self.tok.apply_chat_template(conv, tokenize=False,
                                                add_generation_prompt=add_generation_prompt)
        except Exception as exc:  # jinja2 TemplateError, or whatever the template calls raises
            raise PromptError(f"the model's chat template refused this conversation: {exc}",
                              "messages") from exc
        if not isinstance(text, str):
            raise PromptError(f"the chat template rendered {type(text).__name__}, not text",
                              "chat_template")
        return text

    def _end_of_turn(self) -> int | None:
        """The special token the template writes right after an assistant reply, if any."""
        try:
            text = self._render((*_PROBE_CONVERSATION, ("assistant", _PROBE_REPLY)),
                                add_generation_prompt=False)
        except PromptError:
            return None  # check() reports it; formatting falls back to EOS
        at = text.rfind(_PROBE_REPLY)
        if at < 0:
            return None
        after = self.tok.encode(text[at + len(_PROBE_REPLY):], add_special_tokens=False)
        if not after:
            return None
        first = int(after[0])
        return first if first == self.eos_id or _is_special(self.tok, first) else None


def _is_special(tokenizer: Tokenizer, token_id: int) -> bool:
    """Whether ``token_id`` is one of the tokenizer's special (control) tokens."""
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    entry = added.get(token_id)
    if entry is not None and getattr(entry, "special", False):
        return True
    return token_id in set(getattr(tokenizer, "all_special_ids", ()) or ())
