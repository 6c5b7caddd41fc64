"""HTTP front of the inference service (stdlib ``http.server``, one thread per connection).

Routes (OpenAI-compatible subset plus our own):

- ``POST /v1/chat/completions``, ``POST /v1/completions`` — ``stream: true`` answers with
  server-sent events ``data: {chunk}`` and a final ``data: [DONE]``.
- ``GET /v1/models`` — the base model, with the active adapter version.
- ``GET /health`` — status, adapter, queue depth, last request time (the daemon's "user idle").
- ``POST /v1/feedback`` — ``{id, rating: up|down, correction?}`` for a served interaction.
- ``POST /v1/admin/reload-adapter`` — switch to the registry's active adapter now (loopback
  and unix-socket clients only).

Errors use OpenAI's envelope ``{"error": {"message", "type", ...}}``: malformed JSON 400,
wrong types 422, body or prompt too large 413, prompt longer than the context 400, unknown
interaction 404, queue full 503 with ``Retry-After``. Every generation response carries its
interaction id in ``id`` and in the ``x-interaction-id`` header, and the adapter version in
``adapter_version`` / ``x-adapter-version``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import socketserver
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import ValidationError

from agent.io.store_records import new_interaction_id
from agent.services.inference.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    FeedbackRequest,
    chat_chunk,
    chat_response,
    completion_chunk,
    completion_response,
    error_body,
    timings,
)
from agent.services.inference.sampling import SamplingParams
from agent.services.inference.settings import ServeConfig
from agent.services.inference.worker import Job, JobDone

if TYPE_CHECKING:
    from agent.io.store import InteractionStore
    from agent.services.inference.generation import Generator, TextCodec
    from agent.services.inference.hotswap import AdapterSlot
    from agent.services.inference.worker import GenerationWorker

log = logging.getLogger(__name__)


class ServedApp(Protocol):
    """What a request handler needs of the service (``InferenceService`` is one).

    Typed here, so this module does not import the service that builds it (no import circle).
    """

    config: ServeConfig
    model_name: str
    bundle_id: str
    started_at: int
    last_request_at: float | None
    slot: AdapterSlot
    store: InteractionStore | None
    codec: TextCodec
    generator: Generator
    worker: GenerationWorker

    def health(self) -> dict[str, Any]: ...

    def retry_after_s(self) -> int: ...


class HttpError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind
        self.headers = headers or {}
        self.extra = extra


class Handler(BaseHTTPRequestHandler):
    """One HTTP request; ``self.server.app`` is the service (a :class:`ServedApp`)."""

    server_version = "mobizo-agent"
    protocol_version = "HTTP/1.0"  # one request per connection: simple and stream-friendly

    @property
    def app(self) -> ServedApp:
        return self.server.app  # type: ignore[attr-defined,no-any-return]

    # --- plumbing -------------------------------------------------------------------------

    def address_string(self) -> str:
        return self.client_address[0] if isinstance(self.client_address, tuple) else "unix"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s %s", self.address_string(), format % args)

    def _send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _dispatch(self, routes: dict[str, Any]) -> None:
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        handler = routes.get(path)
        try:
            if handler is None:
                raise HttpError(404, f"no route {self.command} {path}", "not_found")
            handler()
        except HttpError as err:
            self._send_json(err.status, error_body(err.message, err.kind, **err.extra),
                            err.headers)
        except (BrokenPipeError, ConnectionResetError):
            return  # the client went away
        except Exception as exc:  # a bug must not kill the connection thread silently
            log.exception("error handling %s %s", self.command, path)
            with contextlib.suppress(OSError):
                self._send_json(500, error_body(f"internal error: {exc}", "server_error"))

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        self._dispatch({"/health": self._health, "/v1/models": self._models})

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        self._dispatch({
            "/v1/chat/completions": lambda: self._generate("chat"),
            "/v1/completions": lambda: self._generate("completion"),
            "/v1/feedback": self._feedback,
            "/v1/admin/reload-adapter": self._reload,
        })

    def _body(self) -> Any:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise HttpError(411, "send the JSON body with a Content-Length header")
        limit = self.app.config.max_body_bytes
        if int(length) > limit:
            self.close_connection = True
            raise HttpError(413, f"request body of {length} bytes is over the limit of {limit}",
                            limit_bytes=limit)
        raw = self.rfile.read(int(length))
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise HttpError(400, f"malformed JSON body: {exc}") from exc

    @staticmethod
    def _validated(model: Any, body: Any) -> Any:
        try:
            return model.model_validate(body)
        except ValidationError as exc:
            problems = [{"field": ".".join(str(p) for p in e["loc"]) or "(body)",
                         "problem": e["msg"]} for e in exc.errors()]
            summary = "; ".join(f"{p['field']}: {p['problem']}" for p in problems)
            raise HttpError(422, f"invalid request: {summary}", details=problems) from exc

    # --- routes ---------------------------------------------------------------------------

    def _health(self) -> None:
        self._send_json(200, self.app.health())

    def _models(self) -> None:
        app = self.app
        self._send_json(200, {"object": "list", "data": [{
            "id": app.model_name, "object": "model", "created": app.started_at,
            "owned_by": "mobizo-agent", "bundle_id": app.bundle_id,
            "adapter_version": app.slot.version,
        }]})

    def _reload(self) -> None:
        if isinstance(self.client_address, tuple) and not _is_loopback(self.client_address[0]):
            raise HttpError(403, "adapter reload is allowed from loopback or the unix socket only",
                            "permission_error")
        result = self.app.slot.reload()
        status = 200 if result.error is None else 409
        self._send_json(status, {"version": result.version, "switched": result.switched,
                                 "error": result.error, "seconds": result.seconds})

    def _feedback(self) -> None:
        self.app.last_request_at = time.time()  # the user is here: not idle
        req: FeedbackRequest = self._validated(FeedbackRequest, self._body())
        store = self.app.store
        if store is None:
            raise HttpError(404, f"unknown interaction {req.id!r} (capture is off)", "not_found")
        try:
            ticket = store.set_feedback(req.id, req.rating, req.correction)
        except KeyError:
            raise HttpError(404, f"unknown interaction {req.id!r}: it was never served, or "
                            "it was purged or evicted", "not_found") from None
        ticket.wait(self.app.config.commit_ack_timeout_s)
        self._send_json(200, {"id": req.id, "status": "recorded"})

    def _generate(self, kind: str) -> None:
        app = self.app
        app.last_request_at = time.time()
        body = self._body()
        req: ChatCompletionRequest | CompletionRequest = self._validated(
            ChatCompletionRequest if kind == "chat" else CompletionRequest, body)
        messages = ([m.model_dump() for m in req.messages]
                    if isinstance(req, ChatCompletionRequest) else None)
        prompt = req.prompt if isinstance(req, CompletionRequest) else None
        chars = len(prompt) if prompt is not None else \
            sum(len(m["content"]) for m in messages or [])
        limit = app.config.max_prompt_chars
        if chars > limit:
            raise HttpError(413, f"prompt of {chars} characters is over the limit of {limit}",
                            limit_chars=limit)
        ids = app.codec.encode_chat(messages) if messages is not None else \
            app.codec.encode_prompt(prompt or "")
        ctx = app.generator.max_context
        if not ids:
            raise HttpError(400, "the prompt is empty")
        if len(ids) >= ctx:
            raise HttpError(400, f"the prompt is {len(ids)} tokens; this model's context holds "
                            f"{ctx} tokens (prompt + generated), so at most {ctx - 1} for the "
                            "prompt", prompt_tokens=len(ids), max_context=ctx)
        params = SamplingParams(
            temperature=req.temperature, top_p=req.top_p,
            max_tokens=min(req.token_limit or app.config.default_max_tokens, ctx - len(ids)),
            stop=req.stop_list, seed=req.seed, ignore_eos=req.ignore_eos)
        job = Job(id=new_interaction_id(), kind=kind, prompt_ids=ids, params=params,
                  messages=messages, prompt=prompt)
        if not app.worker.submit(job):
            raise HttpError(503, "the service is busy (request queue full); retry shortly",
                            "overloaded", headers={"Retry-After": str(app.retry_after_s())})
        if req.stream:
            self._stream(kind, job)
        else:
            self._complete(kind, job)

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
        if done.ticket is not None:
            done.ticket.wait(self.app.config.commit_ack_timeout_s)
        r = done.result
        usage = {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
                 "total_tokens": r.prompt_tokens + r.completion_tokens}
        build = chat_response if kind == "chat" else completion_response
        body = build(job.id, int(time.time()), self.app.model_name, r.text, r.finish_reason,
                     usage, done.adapter_version)
        body["timings"] = timings(r.prompt_tokens, r.prefill_s, r.completion_tokens, r.decode_s)
        self._send_json(200, body, {"x-interaction-id": job.id,
                                    "x-adapter-version": done.adapter_version})

    def _stream(self, kind: str, job: Job) -> None:
        event, value = self._next_event(job)
        if event == "error":
            raise HttpError(500, value, "server_error")
        version = value if event == "start" else self.app.slot.version
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("x-interaction-id", job.id)
        self.send_header("x-adapter-version", version)
        self.end_headers()
        created, model = int(time.time()), self.app.model_name

        def send(payload: Any) -> None:
            data = payload if isinstance(payload, str) else json.dumps(payload)
            self.wfile.write(f"data: {data}\n\n".encode())
            self.wfile.flush()

        try:
            if kind == "chat":
                send(chat_chunk(job.id, created, model, {"role": "assistant", "content": ""},
                                None, version))
            while True:
                event, value = self._next_event(job)
                if event == "delta":
                    send(chat_chunk(job.id, created, model, {"content": value}, None, version)
                         if kind == "chat" else
                         completion_chunk(job.id, created, model, value, None, version))
                elif event == "error":
                    send({"error": {"message": value, "type": "server_error"}})
                    return
                elif event == "done":
                    break
            done: JobDone = value
            r = done.result
            final = (chat_chunk(job.id, created, model, {}, r.finish_reason, version)
                     if kind == "chat" else
                     completion_chunk(job.id, created, model, "", r.finish_reason, version))
            final["usage"] = {"prompt_tokens": r.prompt_tokens,
                              "completion_tokens": r.completion_tokens,
                              "total_tokens": r.prompt_tokens + r.completion_tokens}
            final["timings"] = timings(r.prompt_tokens, r.prefill_s, r.completion_tokens,
                                       r.decode_s)
            if done.ticket is not None:
                done.ticket.wait(self.app.config.commit_ack_timeout_s)
            send(final)
            send("[DONE]")
        except (BrokenPipeError, ConnectionResetError):
            job.cancelled.set()  # the client left: stop generating for it


def _is_loopback(host: str) -> bool:
    return host.startswith("127.") or host in ("::1", "::ffff:127.0.0.1")


class TcpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
