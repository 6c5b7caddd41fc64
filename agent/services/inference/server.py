"""HTTP routes of the inference service (stdlib ``http.server`` handlers).

Connections come from :mod:`agent.services.inference.connections` (a selector and fixed
pools of threads, with timeouts); every request passes :mod:`agent.services.inference.guard`
first: Host allowlist, bearer token on TCP, ``application/json`` bodies, Content-Length.

Routes (OpenAI-compatible subset plus our own):

- ``POST /v1/chat/completions``, ``POST /v1/completions`` — ``stream: true`` answers with
  server-sent events ``data: {chunk}`` and a final ``data: [DONE]``.
- ``GET /v1/models`` — the base model, with the active adapter version.
- ``GET /health`` — status, bundle (id, path, switches, last error), adapter, queue depth,
  last request time (the daemon's "user idle"); without the token only status, model and
  bundle id. When ``bundle_dir`` is a link that moves, the service serves the new bundle
  (bundle_switch.py): a generation request arriving during the switch waits for it.
- ``GET /metrics`` — Prometheus text format (:mod:`agent.services.inference.metrics`); the
  token on TCP, like every route but ``/health``.
- ``POST /v1/feedback`` — ``{id, rating: up|down, correction?}`` for a served interaction.
- ``POST /v1/admin/reload-adapter`` — switch to the registry's active adapter now (loopback
  and unix-socket clients only).
- ``POST /tokenize``, ``POST /detokenize`` — llama.cpp's: text ↔ token ids.
- ``POST /v1/admin/program`` — ``{"resident": false}`` releases the program while a training
  burst runs, ``true`` loads it (loopback and unix socket only; residency.py).

Which OpenAI request fields are implemented, and how the others are refused (400 naming the
field): docs/api.md.

Errors use OpenAI's envelope ``{"error": {"message", "type", ...}}``: malformed JSON 400,
wrong types 422, body, prompt, stop strings or correction too large 413, prompt longer than
the context 400, unknown interaction 404, no or a wrong token 401, a foreign Host 403, not
JSON 415, too many corrections 429, queue full or feedback not stored 503 with
``Retry-After``. Every generation response carries its
interaction id in ``id`` and in the ``x-interaction-id`` header, and the adapter version in
``adapter_version`` / ``x-adapter-version``.
"""

from __future__ import annotations

import json
import queue
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from agent.core.prompt_format import PromptError
from agent.io.store_records import new_interaction_id
from agent.services.inference.api_handler import (
    ApiContext,
    ServedApp,
    serve_connection,
)
from agent.services.inference.bundle_switch import GateTimeout
from agent.services.inference.constrained import ConstraintError, ConstraintUnavailable
from agent.services.inference.context_fit import fit_messages
from agent.services.inference.guard import HttpError, check_stops, is_loopback
from agent.services.inference.logprob_format import chat_logprobs, completion_logprobs
from agent.services.inference.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    FeedbackRequest,
    FieldRefused,
)
from agent.services.inference.responses import (
    chat_chunk,
    chat_response,
    completion_chunk,
    completion_response,
    timings,
    usage,
    usage_chunk,
)
from agent.services.inference.sampling import TokenLogprob
from agent.services.inference.tokenize_routes import TokenizeRoutes
from agent.services.inference.worker import Job, JobDone

if TYPE_CHECKING:
    from agent.services.inference.generation import GenerationResult, TextDelta

__all__ = ["ApiContext", "Handler", "ServedApp", "serve_connection"]


class Handler(TokenizeRoutes):
    """The API's routes (see the module docstring); the plumbing is :class:`ApiHandler`."""

    _status: int | None = None  # the first status sent (GET /metrics counts it)
    _routes: dict[str, Any] = {}  # noqa: RUF012 - replaced per request, never mutated

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        self._dispatch({"/health": self._health, "/v1/models": self._models,
                        "/metrics": self._metrics})

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        self._dispatch({
            "/v1/chat/completions": lambda: self._gated("chat"),
            "/v1/completions": lambda: self._gated("completion"),
            "/v1/feedback": self._feedback,
            "/v1/admin/reload-adapter": self._reload,
            "/v1/admin/program": self._program,
            "/tokenize": self._tokenize,
            "/detokenize": self._detokenize,
        })

    def _dispatch(self, routes: dict[str, Any]) -> None:
        # per request: a kept-alive connection's handler serves several
        self._status, self._routes = None, routes
        super()._dispatch(routes)

    def send_response(self, code: int, message: str | None = None) -> None:
        if self._status is None:  # every answered request, by route (unknown paths:
            # "other") and status, counted before its status line goes out: a client that
            # has read the answer and scrapes /metrics next finds it counted
            self._status = code
            # (a request line too broken to parse is answered before self.path exists)
            path = str(getattr(self, "path", "")).split("?", 1)[0].rstrip("/") or "/"
            self.app.metrics.request(path if path in self._routes else "other", code)
        super().send_response(code, message)

    def _metrics(self) -> None:
        body, content_type = self.app.metrics.render()
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _health(self) -> None:
        if self.authorized:
            self._send_json(200, self.app.health())
        else:  # nothing about users without the token: no activity time, no counts
            app = self.app
            self._send_json(200, {"status": "ok", "model": app.model_name,
                                  "bundle_id": app.bundle_id})

    def _models(self) -> None:
        app = self.app
        self._send_json(200, {"object": "list", "data": [{
            "id": app.model_name, "object": "model", "created": app.started_at,
            "owned_by": "mobizo-agent", "bundle_id": app.bundle_id,
            "adapter_version": app.slot.version,
        }]})

    def _reload(self) -> None:
        if isinstance(self.client_address, tuple) and not is_loopback(self.client_address[0]):
            raise HttpError(403, "adapter reload is allowed from loopback or the unix socket only",
                            "permission_error")
        result = self.app.slot.reload()
        status = 200 if result.error is None else 409
        self._send_json(status, {"version": result.version, "switched": result.switched,
                                 "error": result.error, "seconds": result.seconds})

    def _program(self) -> None:
        """``{"resident": false}``: release the program (a burst starts); ``true``: load it."""
        if isinstance(self.client_address, tuple) and not is_loopback(self.client_address[0]):
            raise HttpError(403, "program residency is set from loopback or the unix socket only",
                            "permission_error")
        body = self._body()
        resident = body.get("resident") if isinstance(body, dict) else None
        if not isinstance(resident, bool):
            raise HttpError(400, 'send {"resident": false} to release the program while a '
                            'burst runs, or {"resident": true} to load it', param="resident")
        program = self.app.program
        if resident:
            program.load()
        elif not program.release():
            raise HttpError(409, "a request is still generating; the program stays loaded",
                            "busy")
        self._send_json(200, program.status())

    def _feedback(self) -> None:
        self.app.last_request_at = time.time()  # the user is here: not idle
        req: FeedbackRequest = self._validated(FeedbackRequest, self._body())
        store = self.app.store
        if store is None:
            raise HttpError(404, f"unknown interaction {req.id!r} (capture is off)", "not_found")
        self._check_correction(req.correction)
        try:
            ticket = store.set_feedback(req.id, req.rating, req.correction)
        except KeyError:
            raise HttpError(404, f"unknown interaction {req.id!r}: it was never served, or "
                            "it was purged or evicted", "not_found") from None
        except (sqlite3.Error, OSError) as exc:  # e.g. a store that cannot be read
            raise _not_stored(str(exc)) from exc
        if ticket.wait(self.app.config.commit_ack_timeout_s):
            self._send_json(200, {"id": req.id, "status": "recorded"})
        elif ticket.error is not None or not ticket.accepted:
            raise _not_stored(ticket.error or "the store's write queue is full")
        else:  # not committed yet, not failed either: say so instead of "recorded"
            self._send_json(202, {"id": req.id, "status": "queued"})

    def _check_correction(self, correction: str | None) -> None:
        if correction is None:
            return
        cfg = self.app.config
        if len(correction) > cfg.max_correction_chars:
            raise HttpError(413, f"correction of {len(correction)} characters is over the "
                            f"limit of {cfg.max_correction_chars}", param="correction",
                            limit_chars=cfg.max_correction_chars)
        wait = self.server.corrections.take()  # type: ignore[attr-defined]
        if wait is not None:
            self.app.metrics.refused("rate_limited")
            raise HttpError(429, f"more than {cfg.corrections_per_minute} corrections a "
                            "minute; retry later", "rate_limit_error",
                            headers={"Retry-After": str(max(1, int(wait + 0.999)))})

    def _gated(self, kind: str) -> None:
        """A generation request, from tokenizing to its last byte, on one bundle: a bundle
        switch waits for it, and one in progress makes it wait (bundle_switch.py)."""
        app = self.app
        try:
            with app.gate.serving(app.config.request_timeout_s):
                self._generate(kind)
        except GateTimeout as exc:
            raise HttpError(503, f"{exc}; retry shortly", "overloaded",
                            headers={"Retry-After": "5"}) from exc

    def _generate(self, kind: str) -> None:
        app = self.app
        app.last_request_at = time.time()
        body = self._body()
        req: ChatCompletionRequest | CompletionRequest = self._validated(
            ChatCompletionRequest if kind == "chat" else CompletionRequest, body)
        vocab = app.generator.vocab_size
        try:
            req.check_supported(vocab)
            if (schema := req.schema_text()) is not None:
                app.generator.constraints.check(schema)
        except FieldRefused as exc:
            raise HttpError(400, str(exc), param=exc.field) from exc
        except (ConstraintError, ConstraintUnavailable) as exc:
            raise HttpError(400, f"response_format: {exc}", param="response_format") from exc
        try:  # text content; the prompt format is shared with the trainer
            messages = req.text_messages() if isinstance(req, ChatCompletionRequest) else None
        except PromptError as exc:
            raise HttpError(400, str(exc), param=exc.field) from exc
        given_ids = req.prompt_ids() if isinstance(req, CompletionRequest) else None
        prompt = None if not isinstance(req, CompletionRequest) else \
            req.prompt_text if given_ids is None else app.codec.decode(given_ids)
        check_stops(req.stop_list, app.config.max_stop_strings, app.config.max_stop_chars)
        chars = len(prompt) if prompt is not None else \
            sum(len(m["content"]) for m in messages or [])
        limit = app.config.max_prompt_chars
        if chars > limit:
            raise HttpError(413, f"prompt of {chars} characters is over the limit of {limit}",
                            limit_chars=limit)
        ctx = app.generator.max_context
        want = req.token_limit or app.config.default_max_tokens
        ids, messages, dropped = self._prompt_ids(messages, prompt, given_ids,
                                                  lambda n: n + want <= ctx)
        if not ids:
            raise HttpError(400, "the prompt is empty")
        if len(ids) >= ctx:
            raise HttpError(400, f"the prompt is {len(ids)} tokens; this model's context holds "
                            f"{ctx} tokens (prompt + generated), so at most {ctx - 1} for the "
                            "prompt", prompt_tokens=len(ids), max_context=ctx)
        params = req.sampling_params(  # the model's generation_config.json fills the gaps
            app.codec.defaults, max_tokens=min(want, ctx - len(ids)), vocab_size=vocab)
        job = Job(id=new_interaction_id(), kind=kind, prompt_ids=ids, params=params,
                  messages=messages, prompt=prompt, truncated_messages=dropped)
        if not app.worker.submit(job):
            app.metrics.refused("queue_full")
            raise HttpError(503, "the service is busy (request queue full); retry shortly",
                            "overloaded", headers={"Retry-After": str(app.retry_after_s())})
        if req.stream:
            self._stream(kind, job, req.include_usage)
        else:
            self._complete(kind, job)

    def _prompt_ids(self, messages: list[dict[str, str]] | None, prompt: str | None,
                    given_ids: list[int] | None, fits: Callable[[int], bool]
                    ) -> tuple[list[int], list[dict[str, str]] | None, int]:
        """The prompt's token ids, the messages kept and how many old ones were dropped
        (the context policy); ids a completion gave are used as they are."""
        app = self.app
        try:
            if given_ids is not None:
                return given_ids, None, 0
            if messages is None:
                return app.codec.encode_prompt(prompt or ""), None, 0
            if app.config.context_policy == "truncate":
                fitted = fit_messages(messages, app.codec.encode_chat, fits)
                return fitted.ids, fitted.messages, fitted.dropped
            return app.codec.encode_chat(messages), messages, 0
        except PromptError as exc:  # e.g. a chat template that refuses the roles' order
            raise HttpError(400, str(exc), param=exc.field) from exc

    def _next_event(self, job: Job) -> tuple[str, Any]:
        try:
            return job.events.get(timeout=self.app.config.request_timeout_s)
        except queue.Empty:
            job.cancelled.set()
            raise HttpError(504, "generation timed out", "timeout") from None

    def _complete(self, kind: str, job: Job) -> None:
        while True:
            event, value = self._next_event(job)
            if event == "error":
                raise HttpError(500, value, "server_error")
            if event == "done":
                break
        done: JobDone = value
        self.app.metrics.generated(done.result, done.latency_ms / 1000)
        if done.ticket is not None:
            done.ticket.wait(self.app.config.commit_ack_timeout_s)
        r = done.result
        build = chat_response if kind == "chat" else completion_response
        body = build(job.id, int(time.time()), self.app.model_name, r.text, r.finish_reason,
                     usage(r.prompt_tokens, r.completion_tokens, r.cached_tokens,
                           job.truncated_messages), done.adapter_version,
                     self._logprobs(kind, job, r.logprobs, 0)[0])
        body["timings"] = _timings(r)
        self._send_json(200, body, {"x-interaction-id": job.id,
                                    "x-adapter-version": done.adapter_version,
                                    **_truncated_header(job)})

    def _logprobs(self, kind: str, job: Job, entries: Sequence[TokenLogprob], offset: int
                  ) -> tuple[dict[str, Any] | None, int]:
        """The wire form of ``entries`` (None when the request asked for no logprobs)."""
        if job.params.logprobs is None:
            return None, offset
        if kind == "chat":
            return chat_logprobs(entries, self.app.codec.piece), offset
        return completion_logprobs(entries, self.app.codec.piece, offset)

    def _stream(self, kind: str, job: Job, include_usage: bool = False) -> None:
        event, value = self._next_event(job)
        if event == "error":
            raise HttpError(500, value, "server_error")
        version = value if event == "start" else self.app.slot.version
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("x-interaction-id", job.id)
        self.send_header("x-adapter-version", version)
        for name, value in _truncated_header(job).items():
            self.send_header(name, value)
        self.end_headers()
        created, model = int(time.time()), self.app.model_name

        def send(payload: Any) -> None:
            if include_usage and isinstance(payload, dict):  # OpenAI: null until the last
                payload.setdefault("usage", None)
            data = payload if isinstance(payload, str) else json.dumps(payload)
            self.wfile.write(f"data: {data}\n\n".encode())
            self.wfile.flush()

        try:
            if kind == "chat":
                send(chat_chunk(job.id, created, model, {"role": "assistant", "content": ""},
                                None, version))
            offset = 0  # completions' text_offset runs across chunks
            while True:
                event, value = self._next_event(job)
                if event == "delta":
                    piece: TextDelta = value
                    lp, offset = self._logprobs(kind, job, piece.logprobs, offset)
                    send(chat_chunk(job.id, created, model, {"content": piece.text}, None,
                                    version, lp)
                         if kind == "chat" else
                         completion_chunk(job.id, created, model, piece.text, None, version,
                                          lp))
                elif event == "error":
                    send({"error": {"message": value, "type": "server_error"}})
                    return
                elif event == "done":
                    break
            done: JobDone = value
            self.app.metrics.generated(done.result, done.latency_ms / 1000)
            r = done.result
            final = (chat_chunk(job.id, created, model, {}, r.finish_reason, version)
                     if kind == "chat" else
                     completion_chunk(job.id, created, model, "", r.finish_reason, version))
            final["usage"] = usage(r.prompt_tokens, r.completion_tokens, r.cached_tokens,
                                   job.truncated_messages)
            final["timings"] = _timings(r)
            if done.ticket is not None:
                done.ticket.wait(self.app.config.commit_ack_timeout_s)
            send(final)
            if include_usage:
                send(usage_chunk(job.id, created, model, kind, final["usage"], version))
            send("[DONE]")
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            job.cancelled.set()  # the client left (or stopped reading): stop generating


def _timings(r: GenerationResult) -> dict[str, float]:
    """llama.cpp's ``timings``: the prompt tokens fed in the prefill, and those reused."""
    return timings(r.prompt_tokens - r.cached_tokens, r.prefill_s, r.completion_tokens,
                   r.decode_s, cache_n=r.cached_tokens)


def _truncated_header(job: Job) -> dict[str, str]:
    """``X-Mobizo-Truncated: N`` when the context policy dropped N old messages."""
    return {"X-Mobizo-Truncated": str(job.truncated_messages)} if job.truncated_messages else {}


def _not_stored(reason: str) -> HttpError:
    return HttpError(503, f"feedback not stored: {reason}", "store_unavailable",
                     headers={"Retry-After": "30"})
