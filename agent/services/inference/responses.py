"""The JSON shapes the API answers with: OpenAI's responses, stream chunks and usage, and
llama.cpp's ``timings`` (the requests are in :mod:`agent.services.inference.protocol`)."""

from __future__ import annotations

from typing import Any


def timings(prompt_n: int, prompt_s: float, predicted_n: int, predicted_s: float,
            cache_n: int = 0) -> dict[str, float]:
    """Speed of one request, in llama.cpp server's ``timings`` shape: ``prompt_n`` counts the
    prompt tokens fed to the program in ``prompt_ms``, ``cache_n`` those the prompt cache
    reused (not fed), so ``prompt_per_second`` is the prefill's real speed."""
    return {
        "cache_n": cache_n, "prompt_n": prompt_n, "prompt_ms": prompt_s * 1000,
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
                  usage: dict[str, Any], adapter: str,
                  logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "id": iid, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "logprobs": logprobs, "finish_reason": finish}],
        "usage": usage, "adapter_version": adapter,
    }


def completion_response(iid: str, created: int, model: str, text: str, finish: str,
                        usage: dict[str, Any], adapter: str,
                        logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "id": iid, "object": "text_completion", "created": created, "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": logprobs}],
        "usage": usage, "adapter_version": adapter,
    }


def chat_chunk(iid: str, created: int, model: str, delta: dict[str, str],
               finish: str | None, adapter: str,
               logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "id": iid, "object": "chat.completion.chunk", "created": created, "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": logprobs,
                     "finish_reason": finish}],
        "adapter_version": adapter,
    }


def completion_chunk(iid: str, created: int, model: str, text: str,
                     finish: str | None, adapter: str,
                     logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "id": iid, "object": "text_completion", "created": created, "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": logprobs}],
        "adapter_version": adapter,
    }


def usage_chunk(iid: str, created: int, model: str, kind: str, usage: dict[str, Any],
                adapter: str) -> dict[str, Any]:
    """The last chunk of a stream with ``stream_options.include_usage``: no choices."""
    return {
        "id": iid, "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
        "created": created, "model": model, "choices": [], "usage": usage,
        "adapter_version": adapter,
    }
