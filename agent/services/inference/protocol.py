"""Wire models of the HTTP API: the OpenAI-compatible subset plus feedback and health.

Requests are strict: a string where a number belongs is a 422, not a silent coercion, and a
field this service does not implement is refused with 400 naming it (:data:`REFUSED` says why
for the well-known ones), so an SDK or agent framework learns at once that ``tools`` or
``response_format: json_schema`` did nothing, instead of misbehaving quietly. A field sent as
``null`` is the same as one left out (as OpenAI reads it). The supported fields are listed in
docs/api.md. A message's content is a string or OpenAI content parts;
:meth:`ChatCompletionRequest.text_messages` turns them into the text the prompt format
(agent/core/prompt_format.py, shared with the trainer) reads, refusing a part that is not
text. Sampling fields a request leaves out take the model's defaults (its
generation_config.json, :class:`SamplingDefaults`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.core.prompt_format import conversation
from agent.services.inference.sampling import SamplingDefaults, SamplingParams

Role = Literal["system", "user", "assistant", "tool", "developer"]
MAX_TOP_LOGPROBS = 20  # OpenAI's bound

_NO_TOOLS = ("this service does not call tools (no tool-call parsing or tool prompt); remove "
             "it and describe the tools in the system message if the model should know them")
# Why the well-known fields that are not implemented are refused; any other unknown field
# is refused too, as "unknown".
REFUSED: dict[str, str] = {
    "tools": _NO_TOOLS, "tool_choice": _NO_TOOLS, "functions": _NO_TOOLS,
    "function_call": _NO_TOOLS, "parallel_tool_calls": _NO_TOOLS, "tool_calls": _NO_TOOLS,
    "tool_call_id": _NO_TOOLS,
    "name": "the prompt format has no place for a speaker name; put it in the content",
    "best_of": "one sequence is generated per request; leave it out",
    "echo": "the prompt is not echoed back; leave it out",
    "suffix": "insertion (fill in the middle) is not supported; leave it out",
    "modalities": "this model reads and writes text only; leave it out",
    "audio": "this model reads and writes text only; leave it out",
    "prediction": "predicted outputs are not supported; leave it out",
    "store": "nothing is stored for OpenAI's dashboards here; leave it out",
    "metadata": "nothing is stored for OpenAI's dashboards here; leave it out",
    "service_tier": "there is one service tier on a board; leave it out",
    "reasoning_effort": "this model has no reasoning-effort control; leave it out",
    "web_search_options": "there is no web search here; leave it out",
    "n_probs": "use 'logprobs' and 'top_logprobs' (OpenAI's fields)",
    "cache_prompt": "the prompt cache is the service's setting ([inference] "
                    "prompt_cache_slots), not a request's",
}


class FieldRefused(ValueError):
    """A request asks for something this service does not do; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        """``"field": null`` means "not given" in OpenAI's API: drop it before the checks."""
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None or k in cls.model_fields}
        return data


class ChatMessage(_Request):
    role: Role
    content: str | list[dict[str, Any]] = Field(
        description="text, or OpenAI content parts: only {'type': 'text', 'text': ...}")


class StreamOptions(_Request):
    include_usage: bool = Field(default=False, description="send a last chunk with `usage` "
                                "and no choices before [DONE]")


class _Sampling(_Request):
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    temperature: float | None = Field(default=None, ge=0, le=2,
                                      description="0 is greedy; absent: the model's default")
    top_p: float | None = Field(default=None, gt=0, le=1,
                                description="nucleus mass; absent: the model's default")
    top_k: int | None = Field(default=None, ge=0, le=1_000_000,
                              description="keep the k likeliest tokens, 0 all (vLLM's and "
                              "llama.cpp's option); absent: the model's default")
    min_p: float = Field(default=0.0, ge=0, le=1, description="drop tokens under min_p x "
                         "the top probability (vLLM's and llama.cpp's option)")
    repetition_penalty: float = Field(default=1.0, gt=0, le=10, description="divide the "
                                      "logits of recent tokens (transformers' semantics)")
    repeat_last_n: int = Field(default=64, ge=0, le=1_000_000, description="the repetition "
                               "penalty's window over prompt + output (llama.cpp's option)")
    presence_penalty: float = Field(default=0.0, ge=-2, le=2)
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2)
    logit_bias: dict[str, float] | None = Field(
        default=None, description="token id (as a string) -> bias in [-100, 100]")
    n: int = Field(default=1, description="choices per request: only 1")
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = Field(default=None, description="seeds the sampler: same request, "
                             "same seed, same output")
    user: str | None = Field(default=None, max_length=256, description="accepted and "
                             "ignored: OpenAI's end-user id for abuse monitoring")
    ignore_eos: bool = Field(default=False, description="keep going past end-of-sequence "
                             "(llama.cpp's option; benchmarks use it)")

    @property
    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def logprob_count(self) -> int | None:
        """How many alternatives per token to report; None: no logprobs."""
        raise NotImplementedError

    def schema_text(self) -> str | None:
        """The JSON schema the output must match (``response_format``); None: free text."""
        return None

    def check_supported(self, vocab_size: int) -> None:
        """Refuse what passed the types but is not implemented, or names unknown tokens.

        Raises:
            FieldRefused: naming the field and what to send instead.
        """
        if self.n != 1:
            raise FieldRefused("n", f"is {self.n}: one choice per request (n = 1) only")
        if self.stream_options is not None and not self.stream:
            raise FieldRefused("stream_options", "is only for streamed requests "
                               "(stream: true)")
        self.bias_pairs(vocab_size)

    def bias_pairs(self, vocab_size: int | None = None) -> tuple[tuple[int, float], ...]:
        """``logit_bias`` as (token id, bias), checked against the vocabulary (if given)."""
        pairs = []
        for key, bias in (self.logit_bias or {}).items():
            where = f"logit_bias.{key}"
            if not (key.isascii() and key.isdigit()) or (
                    vocab_size is not None and int(key) >= vocab_size):
                top = "" if vocab_size is None else f" (0 to {vocab_size - 1})"
                raise FieldRefused(where, f"{key!r} is not a token id of this model{top}; "
                                   "/tokenize shows a text's ids")
            if not -100 <= bias <= 100:
                raise FieldRefused(where, f"bias {bias} is outside [-100, 100]")
            pairs.append((int(key), float(bias)))
        return tuple(pairs)

    def sampling_params(self, defaults: SamplingDefaults, max_tokens: int,
                        vocab_size: int | None = None) -> SamplingParams:
        """How to sample this request: its own fields, the model's defaults for the rest."""
        return SamplingParams(
            temperature=defaults.temperature if self.temperature is None else self.temperature,
            top_p=defaults.top_p if self.top_p is None else self.top_p,
            top_k=defaults.top_k if self.top_k is None else self.top_k,
            min_p=self.min_p, repetition_penalty=self.repetition_penalty,
            penalty_last_n=self.repeat_last_n, presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty, logit_bias=self.bias_pairs(vocab_size),
            logprobs=self.logprob_count(), json_schema=self.schema_text(),
            max_tokens=max_tokens, stop=self.stop_list, seed=self.seed,
            ignore_eos=self.ignore_eos)


class JsonSchemaFormat(_Request):
    """OpenAI's ``response_format.json_schema``."""

    name: str | None = Field(default=None, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema", description="the JSON schema")
    strict: bool | None = Field(default=None, description="always strict here: the output "
                                "is decoded under the schema's grammar")


class ResponseFormat(_Request):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    def schema_text(self) -> str | None:
        """The JSON schema the output must match, as JSON text; None for plain text."""
        if self.type == "text":
            return None
        if self.type == "json_object":
            return '{"type": "object"}'
        if self.json_schema is None:
            raise FieldRefused("response_format.json_schema", "is required with type "
                               "'json_schema': {\"name\": ..., \"schema\": {...}}")
        return json.dumps(self.json_schema.schema_)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    response_format: ResponseFormat | None = None

    def logprob_count(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def check_supported(self, vocab_size: int) -> None:
        super().check_supported(vocab_size)
        if self.top_logprobs is not None and not self.logprobs:
            raise FieldRefused("top_logprobs", "needs logprobs: true")
        self.schema_text()

    def schema_text(self) -> str | None:
        """The JSON schema of ``response_format`` as text (None: free text)."""
        return None if self.response_format is None else self.response_format.schema_text()

    def text_messages(self) -> list[dict[str, str]]:
        """The conversation with text content, as the service formats and stores it.

        Raises:
            PromptError: a content part that is not text (its ``field`` names it).
        """
        turns = conversation([m.model_dump() for m in self.messages])
        return [{"role": role, "content": text} for role, text in turns]


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description="text, or token ids (OpenAI's and llama.cpp's forms); a list holding "
        "one prompt is that prompt, a batch of several is refused (one prompt per request)")
    logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS,
                                 description="report the k likeliest alternatives per token")

    def logprob_count(self) -> int | None:
        return self.logprobs

    def check_supported(self, vocab_size: int) -> None:
        super().check_supported(vocab_size)
        self.prompt_ids(vocab_size)

    @property
    def prompt_text(self) -> str | None:
        """The prompt when it is text (a string, or a list of one); None for token ids."""
        p = self.prompt
        if isinstance(p, str):
            return p
        return p[0] if len(p) == 1 and isinstance(p[0], str) else None

    def prompt_ids(self, vocab_size: int | None = None) -> list[int] | None:
        """The prompt when it is token ids (a list of ints, or a list of one such list),
        checked against the vocabulary (if given); None for text.

        Raises:
            FieldRefused: a batch of several prompts, an empty list, or an unknown id.
        """
        p = self.prompt
        if isinstance(p, str):
            return None
        if not p:
            raise FieldRefused("prompt", "is an empty list: send the prompt as a string "
                               "or as a list of token ids")
        if len(p) > 1 and not isinstance(p[0], int):
            raise FieldRefused("prompt", f"is a batch of {len(p)} prompts; this service "
                               "generates for one prompt per request (n and the batch are "
                               "1): send each prompt in its own request")
        first = p[0]
        if isinstance(first, str):
            return None
        ids: list[int] = first if isinstance(first, list) else p  # type: ignore[assignment]
        if not ids:
            raise FieldRefused("prompt", "holds no token ids")
        for i, token in enumerate(ids):
            if token < 0 or (vocab_size is not None and token >= vocab_size):
                top = "" if vocab_size is None else f" (0 to {vocab_size - 1})"
                raise FieldRefused(f"prompt[{i}]", f"{token} is not a token id of this "
                                   f"model{top}; /tokenize shows a text's ids")
        return list(ids)


class TokenizeRequest(_Request):
    """llama.cpp server's ``POST /tokenize``."""

    content: str
    add_special: bool = Field(default=False, description="add BOS and the like")
    with_pieces: bool = Field(default=False, description="each id with its text piece")


class DetokenizeRequest(_Request):
    """llama.cpp server's ``POST /detokenize``."""

    tokens: list[int] = Field(max_length=1_000_000)


def piece_json(raw: bytes) -> str | list[int]:
    """A token's piece as llama.cpp's /tokenize writes it: text, or its bytes when they are
    not valid UTF-8 on their own."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return list(raw)


def refused_fields(errors: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """The unknown fields among pydantic's errors, each with why it is refused."""
    out = []
    for e in errors:
        if e["type"] == "extra_forbidden":
            where = ".".join(str(p) for p in e["loc"])
            name = str(e["loc"][-1])
            out.append((where, REFUSED.get(name, "unknown field: this service does not "
                                           "implement it (docs/api.md lists what it does)")))
    return out


class FeedbackRequest(_Request):
    id: str = Field(min_length=1, max_length=128, description="interaction id of a response")
    rating: Literal["up", "down"] | None = None
    correction: str | None = Field(default=None, description="what the answer should have been")

    @model_validator(mode="after")
    def _something(self) -> FeedbackRequest:
        if self.rating is None and self.correction is None:
            raise ValueError("give a 'rating' ('up' or 'down'), a 'correction', or both")
        return self


def error_body(message: str, kind: str, **extra: Any) -> dict[str, Any]:
    """OpenAI-style error envelope."""
    return {"error": {"message": message, "type": kind, **extra}}
