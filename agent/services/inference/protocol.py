"""Wire models of the HTTP API: the OpenAI-compatible subset plus feedback and health.

Requests are strict about types (a string where a number belongs is a 422, not a silent
coercion) but ignore unknown fields, because OpenAI clients send many we do not implement.
A message's content is a string or OpenAI content parts; :meth:`ChatCompletionRequest.
text_messages` turns them into the text the prompt format (agent/core/prompt_format.py, shared
with the trainer) reads, refusing a part that is not text. Sampling fields a request leaves out
take the model's defaults (its generation_config.json, :class:`SamplingDefaults`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.core.prompt_format import conversation
from agent.services.inference.sampling import SamplingDefaults, SamplingParams

Role = Literal["system", "user", "assistant", "tool", "developer"]


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class ChatMessage(_Request):
    role: Role
    content: str | list[dict[str, Any]] = Field(
        description="text, or OpenAI content parts: only {'type': 'text', 'text': ...}")


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
    stop: str | list[str] | None = None
    stream: bool = False
    seed: int | None = None
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

    def sampling_params(self, defaults: SamplingDefaults, max_tokens: int) -> SamplingParams:
        """How to sample this request: its own fields, the model's defaults for the rest."""
        return SamplingParams(
            temperature=defaults.temperature if self.temperature is None else self.temperature,
            top_p=defaults.top_p if self.top_p is None else self.top_p,
            top_k=defaults.top_k if self.top_k is None else self.top_k,
            max_tokens=max_tokens, stop=self.stop_list, seed=self.seed,
            ignore_eos=self.ignore_eos)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)

    def text_messages(self) -> list[dict[str, str]]:
        """The conversation with text content, as the service formats and stores it.

        Raises:
            PromptError: a content part that is not text (its ``field`` names it).
        """
        turns = conversation([m.model_dump() for m in self.messages])
        return [{"role": role, "content": text} for role, text in turns]


class CompletionRequest(_Sampling):
    prompt: str


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


def timings(prompt_n: int, prompt_s: float, predicted_n: int, predicted_s: float
            ) -> dict[str, float]:
    """Speed of one request, in llama.cpp server's ``timings`` shape."""
    return {
        "prompt_n": prompt_n, "prompt_ms": prompt_s * 1000,
        "prompt_per_second": prompt_n / prompt_s if prompt_s > 0 else 0.0,
        "predicted_n": predicted_n, "predicted_ms": predicted_s * 1000,
        "predicted_per_second": predicted_n / predicted_s if predicted_s > 0 else 0.0,
    }


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0,
          truncated_messages: int = 0) -> dict[str, Any]:
    """OpenAI's ``usage``, with the prompt cache's reuse (``prompt_tokens_details``) and, when
    the context policy dropped old turns, ``truncated_messages``."""
    body: dict[str, Any] = {
        "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens}}
    if truncated_messages:
        body["truncated_messages"] = truncated_messages
    return body


def chat_response(iid: str, created: int, model: str, text: str, finish: str,
                  usage: dict[str, Any], adapter: str) -> dict[str, Any]:
    return {
        "id": iid, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": finish}],
        "usage": usage, "adapter_version": adapter,
    }


def completion_response(iid: str, created: int, model: str, text: str, finish: str,
                        usage: dict[str, Any], adapter: str) -> dict[str, Any]:
    return {
        "id": iid, "object": "text_completion", "created": created, "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
        "usage": usage, "adapter_version": adapter,
    }


def chat_chunk(iid: str, created: int, model: str, delta: dict[str, str],
               finish: str | None, adapter: str) -> dict[str, Any]:
    return {
        "id": iid, "object": "chat.completion.chunk", "created": created, "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        "adapter_version": adapter,
    }


def completion_chunk(iid: str, created: int, model: str, text: str,
                     finish: str | None, adapter: str) -> dict[str, Any]:
    return {
        "id": iid, "object": "text_completion", "created": created, "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
        "adapter_version": adapter,
    }
