"""The gateway server: ``aiohttp.web``'s low-level server over one running :class:`~runtime.Runtime`.

Every chat, completion, stream and embedding goes through ``rt.chat``, ``rt.complete``,
``rt.stream``, ``rt.stream_complete`` and ``rt.embed``;
the gateway adds only its edge: keys, decoding, the client's dialect, and the process's
lifecycle. A request's way through:

edge (request id, per-process cap, draining) → key (constant-time lookup) → body (size
limit, read timeout) → msgspec decode (400 naming the field) → route (404 unknown, 403
not allowed for the key) → key limits and budget (429 + Retry-After) → the runtime →
the reply in the dialect, with ``x-request-id``, ``x-llm-endpoint``, ``x-llm-attempts``,
``x-llm-cost-usd`` and the key's ``x-ratelimit-*``.

A stream is answered with SSE only once the runtime has its first chunk of content, so
failover before it is invisible and a failure before it is an ordinary error response.
After it, a failure is the dialect's error event and the connection closes: the stream
never ends with ``[DONE]`` or ``message_stop`` after a cut. A client that leaves cancels
its handler (``handler_cancellation``), which closes the upstream stream or request and
frees the endpoint's slot and the key's.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import operator
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import msgspec
from aiohttp import web

from .._pipeline import DEFAULT_REPLY_RESERVE
from .._runtime import ReplyStream, Runtime
from ..accounting import estimate_request_tokens
from ..errors import InvalidRequest, LLMError
from ..types import ChatRequest, ChatResponse
from . import anthropic_wire, openai_wire
from .config import GatewayConfig
from .dialect import Dialect, Failure, cost_of, error_body, error_event, failure_of
from .faces import FACES, Call, Face, decode
from .keys import ClientKey, Grant, KeyRing
from .prometheus import exposition

__all__ = ["Gateway"]

logger = logging.getLogger("runtime.gateway")

_LOOPBACK = ("127.0.0.1", "::1", "localhost")
_JSON = "application/json"
# New request ids: random per process, then a counter (unique, and cheaper than random per request).
_PROCESS_ID = secrets.token_hex(6) + "-"
# Where a decoded body routes to: every body kind names it ``model``.
_model_named = operator.attrgetter("model")
_SERIAL = itertools.count(1)
# The one route with a parameter: /v1/models/{model}.
_MODEL_PREFIX = "/v1/models/"
_MODEL = _MODEL_PREFIX + "{model}"
#: A route's handler: the request and its id.
_Handler = Callable[[web.BaseRequest, str], Awaitable[web.StreamResponse]]
_Body = TypeVar("_Body")


class Gateway:
    """An OpenAI- and Anthropic-compatible HTTP server in front of a running runtime.

    ::

        async with Runtime(endpoints) as rt, Gateway(rt, GatewayConfig(port=0)) as gw:
            openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key="...")

    The runtime's lifecycle stays the caller's. Leaving the ``async with`` drains: ready
    turns false, the port stops accepting, requests in flight get the runtime's
    ``shutdown_grace``, then the server closes.
    """

    def __init__(self, runtime: Runtime, config: GatewayConfig | None = None) -> None:
        self.rt = runtime
        self.config = config or GatewayConfig()
        self.keys = KeyRing(self.config.keys, runtime.budget_guard_for, runtime.limiter_for)
        self.routes = _routes(runtime)
        self._routes_table = self._table()
        self.draining = False
        self.counts: dict[tuple[str, int], int] = {}
        self._in_flight = 0
        # Set by drain() while it waits for the last request in flight: an Event set and
        # cleared around every request cost two calls a request to serve a wait at shutdown.
        self._idle: asyncio.Future[None] | None = None
        self._runner: web.ServerRunner | None = None
        self._sites: list[web.TCPSite] = []
        self.host = self.config.host
        self.port = self.config.port

    def __repr__(self) -> str:
        state = "draining" if self.draining else "serving" if self._runner else "stopped"
        return f"<Gateway [{state} | {self.base_url} | in flight {self._in_flight}]>"

    @property
    def base_url(self) -> str:
        """``http://host:port`` (the OpenAI clients' ``base_url`` is this plus ``/v1``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def in_flight(self) -> int:
        """Requests this process is serving now."""
        return self._in_flight

    # --- lifecycle -------------------------------------------------------------------------

    def _table(self) -> dict[str, dict[str, _Handler]]:
        """The routes: path → method → handler."""
        return {
            "/v1/chat/completions": {"POST": self._chat_completions},
            "/v1/completions": {"POST": self._completions},
            "/v1/messages": {"POST": self._messages},
            "/v1/messages/count_tokens": {"POST": self._count_tokens},
            "/v1/embeddings": {"POST": self._embeddings},
            "/v1/models": {"GET": self._models},
            _MODEL: {"GET": self._model},
            "/health/live": {"GET": self._live},
            "/health/ready": {"GET": self._ready},
            "/status": {"GET": self._status},
            "/metrics": {"GET": self._metrics},
        }

    def server(self) -> web.Server:
        """The ``aiohttp`` low-level server: one handler, :meth:`_edge`, dispatching on a
        dict. ``web.Application``'s router and middleware chain cost 5–10 µs of CPU a request
        on top (measured with a canned answer, uvloop) and the gateway uses none of their features."""
        # keepalive_timeout is also how long a connection may take to send a request
        # head: aiohttp closes a connection still waiting for one when it expires.
        return web.Server(
            self._edge, request_factory=self._request, handler_cancellation=True, access_log=None,
            keepalive_timeout=self.config.header_timeout,
        )

    def _request(self, message: Any, payload: Any, protocol: Any, writer: Any, task: asyncio.Task[None]) -> web.BaseRequest:
        loop = asyncio.get_running_loop()
        return web.BaseRequest(message, payload, protocol, writer, task, loop, client_max_size=self.config.max_body_bytes)

    async def start(self, *, reuse_port: bool = False) -> None:
        """Listen on the configured host and port (0 picks a free port; :attr:`port` tells)."""
        if not self.keys and self.host not in _LOOPBACK:
            logger.warning("no gateway keys configured: listening on 127.0.0.1 only, not %s", self.host)
            self.host = "127.0.0.1"
        runner = web.ServerRunner(self.server(), shutdown_timeout=self.rt.shutdown_grace)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_port=reuse_port or None)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner, self._sites = runner, [site]
        if self.port == 0:
            self.port = runner.addresses[0][1]

    async def drain(self) -> None:
        """Stop taking requests: ready turns false, the port closes, requests in flight
        finish within the runtime's ``shutdown_grace``. Then the server is closed."""
        self.draining = True
        for site in self._sites:
            await site.stop()
        # The grace period is owed to the requests in flight, even if the caller is cancelled.
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.rt.shutdown_grace) as waited:
            if self._in_flight:
                self._idle = asyncio.get_running_loop().create_future()
                await self._idle
        if waited.cancelled_caught:
            logger.warning("drain: %d requests still in flight after %gs", self._in_flight, self.rt.shutdown_grace)
        with anyio.CancelScope(shield=True):
            await self.aclose()

    async def aclose(self) -> None:
        """Close the server at once (requests in flight are cancelled)."""
        runner, self._runner = self._runner, None
        self._sites = []
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.drain()

    # --- the edge ---------------------------------------------------------------------------

    async def _edge(self, request: web.BaseRequest) -> web.StreamResponse:
        """Every request: its id, the draining and per-process refusals, the route, the
        in-flight count, a bug answered 500 in the dialect, the count by route and status."""
        given = request.headers.get("x-request-id", "")
        rid = given if 0 < len(given) <= 128 and given.isascii() and given.isprintable() else f"{_PROCESS_ID}{next(_SERIAL):x}"
        path = request.path
        route = _MODEL if path.startswith(_MODEL_PREFIX) else path
        methods = self._routes_table.get(route)
        handler = methods.get(request.method) if methods is not None else None
        if self.draining and not path.startswith("/health"):
            response: web.StreamResponse = self._failure(rid, _dialect(path), Failure(503, "draining", "the gateway is shutting down", retry_after=1))
        elif handler is None:
            status, code, words = (405, "invalid_request", "method not allowed") if methods else (404, "not_found", "unknown path")
            response = self._failure(rid, _dialect(path), Failure(status, code, f"{words}: {request.method} {path}"))
        elif self._in_flight >= self.config.max_concurrency:
            why = f"this gateway process is serving its limit of {self.config.max_concurrency} requests"
            response = self._failure(rid, _dialect(path), Failure(503, "overloaded", why, retry_after=1))
        else:
            self._in_flight += 1
            try:
                response = await handler(request, rid)
            except Exception:
                # A bug, not the client's fault: logged with the request id, answered in the dialect.
                logger.exception("request %s failed inside the gateway", rid)
                response = self._failure(rid, _dialect(path), Failure(500, "internal_error", f"the gateway failed (request id {rid})"))
            finally:
                self._in_flight -= 1
                idle = self._idle
                if idle is not None and self._in_flight == 0 and not idle.done():
                    idle.set_result(None)
        if not response.prepared:
            response.headers["x-request-id"] = rid
            if self.draining:
                response.force_close()
        key = (route if methods is not None else "other", response.status)
        self.counts[key] = self.counts.get(key, 0) + 1
        return response

    def _failure(self, rid: str, dialect: Dialect, failure: Failure, extra: dict[str, str] | None = None) -> web.Response:
        headers = {"x-request-id": rid, **failure.headers(), **(extra or {})}
        return web.Response(status=failure.status, body=error_body(dialect, failure), content_type=_JSON, headers=headers)

    def _authenticate(self, request: web.BaseRequest) -> ClientKey | Failure | None:
        """The caller's key (None when no keys are configured), or why it is refused."""
        if not self.keys:
            return None
        auth = request.headers.get("Authorization", "")
        presented = auth[7:] if auth[:7].lower() == "bearer " else request.headers.get("x-api-key")
        found = self.keys.find(presented)
        if found is None:
            return Failure(401, "invalid_api_key", "missing or unknown gateway key (send it as Authorization: Bearer KEY or x-api-key)")
        return found

    async def _body(self, request: web.BaseRequest) -> bytes | Failure:
        """A body still on its way (see :meth:`_intake` for one that came with the head)."""
        try:
            if request.headers.get("Expect", "").lower() == "100-continue" and request.version >= (1, 1):
                # curl asks before sending a larger body (and waits a second for no answer);
                # the key has been checked by now, so the body is welcome.
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                request.writer.output_size = 0
            async with asyncio.timeout(self.config.body_timeout):
                return await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._too_large()
        except TimeoutError:
            return Failure(408, "timeout", f"the body was not received within {self.config.body_timeout:g}s", "body")

    def _too_large(self) -> Failure:
        return Failure(413, "request_too_large", f"the body is larger than {self.config.max_body_bytes} bytes", "body")

    def _routing(self, model: str, client: ClientKey | None) -> dict[str, Any] | Failure:
        """``model=``/``endpoint=`` for the runtime, or 404/403."""
        routing = self.routes.get(model)
        if routing is None:
            known = ", ".join(self.routes)
            return Failure(404, "model_not_found", f"no route named {model!r}; routes: {known}", "model")
        if client is not None and not client.allows(model):
            return Failure(403, "model_not_allowed", f"gateway key {client.name!r} may not use {model!r}", "model")
        return routing

    async def _intake(
        self, request: web.BaseRequest, rid: str, dialect: Dialect, decode_body: Callable[[bytes], _Body], model: Callable[[_Body], str]
    ) -> tuple[ClientKey | None, _Body, dict[str, Any]] | web.Response:
        """Authenticate, read, decode and route a request: its key, body and routing, or the
        refusal in the client's dialect. Nothing is held yet, so a refusal releases nothing."""
        client = self._authenticate(request)
        if isinstance(client, Failure):
            return self._failure(rid, dialect, client)
        content = request.content
        if content.is_eof():
            # The whole body came with the head: no wait to bound, and what is buffered is
            # taken at once (BaseRequest.read's loop of chunks costs ~3 µs more a request,
            # a coroutine of our own to read it a little more).
            raw: bytes | Failure = content.read_nowait()
            if len(raw) > self.config.max_body_bytes:
                raw = self._too_large()
        else:
            raw = await self._body(request)
        if isinstance(raw, Failure):
            return self._failure(rid, dialect, raw)
        try:
            body = decode_body(raw)
        except InvalidRequest as exc:
            return self._failure(rid, dialect, failure_of(exc))
        routing = self._routing(model(body), client)
        if isinstance(routing, Failure):
            return self._failure(rid, dialect, routing)
        return client, body, routing

    async def _admit(self, client: ClientKey, tokens: Callable[[], int]) -> Grant | Failure:
        """Take the request's share of its key's limits and budget (``tokens()``: its estimate,
        asked only when a limit reads it), or the 429 saying when to come back. Awaited only
        with a key: without one there is nothing to take, and no coroutine to make."""
        try:
            granted = await client.admit(tokens() if client.counts_tokens else 1, _now())
        except LLMError as exc:  # the key's budget is spent
            return failure_of(exc)
        if isinstance(granted, float):
            why = f"gateway key {client.name!r} is over its {client.limiter.last_refusal or 'rate'} limit"
            return Failure(429, "rate_limit_exceeded", why, retry_after=granted)
        return granted

    @staticmethod
    def _estimate(call: Call) -> int:
        prompt = ChatRequest(messages=call.messages, model=call.model, tools=call.options.get("tools"))
        return estimate_request_tokens(prompt) + (call.max_tokens or DEFAULT_REPLY_RESERVE)

    def _on_interrupt(self, request: web.BaseRequest) -> str | Failure:
        """What a stream that fails after content does: ``x-llm-on-interrupt`` (raise or continue),
        else the runtime's own. Over HTTP a restart cannot take back what the client already
        has, so the runtime's ``restart`` becomes ``continue`` (which restarts only where it
        cannot continue, and such a restart ends the stream with the error event)."""
        asked = request.headers.get("x-llm-on-interrupt")
        if asked is None:
            return "continue" if self.rt.on_interrupt == "restart" else self.rt.on_interrupt
        if asked not in ("raise", "continue"):
            return Failure(400, "invalid_request", f"x-llm-on-interrupt must be raise or continue, got {asked!r}", "x-llm-on-interrupt")
        return asked

    def _reply_headers(self, rid: str, client: ClientKey | None, endpoint: str, attempts: int, cost: float | None) -> dict[str, str]:
        headers = {"x-request-id": rid, "x-llm-endpoint": endpoint, "x-llm-attempts": str(attempts)}
        if cost is not None:
            headers["x-llm-cost-usd"] = f"{cost:.8f}"
        if client is not None:
            headers.update(client.headers(_now()))
        return headers

    # --- chat in either dialect ----------------------------------------------------------------

    # Not coroutines themselves: each hands over _chat's, one frame less per resumption.
    def _chat_completions(self, request: web.BaseRequest, rid: str) -> Awaitable[web.StreamResponse]:
        return self._chat(request, rid, FACES["openai"])

    def _completions(self, request: web.BaseRequest, rid: str) -> Awaitable[web.StreamResponse]:
        return self._chat(request, rid, FACES["completion"])

    def _messages(self, request: web.BaseRequest, rid: str) -> Awaitable[web.StreamResponse]:
        return self._chat(request, rid, FACES["anthropic"])

    async def _chat(self, request: web.BaseRequest, rid: str, face: Face) -> web.StreamResponse:
        intake = await self._intake(request, rid, face.dialect, face.decode, _model_named)
        if isinstance(intake, web.Response):
            return intake
        client, call, routing = intake
        if call.stream:
            recovery = self._on_interrupt(request)
            if isinstance(recovery, Failure):
                return self._failure(rid, face.dialect, recovery)
            routing = {**routing, "on_interrupt": recovery}
        # The key's share is taken last: every refusal above holds nothing.
        grant = await self._admit(client, lambda: self._estimate(call)) if client is not None else None
        if isinstance(grant, Failure):
            return self._failure(rid, face.dialect, grant, client.headers(_now()) if client else None)
        settled = False
        try:
            if call.stream:
                response, reply = await self._stream(request, rid, face, call, routing, client)
            else:
                reply = await (
                    self.rt.chat(call.messages, **routing, **call.options) if call.prompt is None
                    else self.rt.complete(call.prompt, **routing, **call.options)
                )
                headers = self._reply_headers(rid, client, reply.endpoint, len(reply.attempts), cost_of(reply))
                response = web.Response(body=face.reply(reply, rid), content_type=_JSON, headers=headers)
            if client is not None and grant is not None and reply is not None:
                client.settle(grant, reply.usage.input_tokens + reply.usage.output_tokens, reply.cost_usd, _now())
                settled = True
            return response
        except LLMError as exc:
            return self._failure(rid, face.dialect, failure_of(exc))
        finally:
            if not settled and client is not None and grant is not None:
                client.release(grant, _now())

    async def _stream(
        self, request: web.BaseRequest, rid: str, face: Face, call: Call, routing: dict[str, Any], client: ClientKey | None
    ) -> tuple[web.StreamResponse, ChatResponse | None]:
        """Answer with SSE once the runtime has content; (response, the whole reply or None after a cut)."""
        stream: ReplyStream = (
            self.rt.stream(call.messages, **routing, **call.options) if call.prompt is None
            else self.rt.stream_complete(call.prompt, **routing, **call.options)
        )
        async with stream:
            headers = self._reply_headers(rid, client, stream.endpoint or "", len(stream.attempts), None)
            headers["Cache-Control"] = "no-cache"
            response = web.StreamResponse(headers=headers)
            response.content_type = "text/event-stream"
            await response.prepare(request)
            writer = face.writer(rid, call)
            try:
                opening = writer.opening()
                if opening:
                    await response.write(opening)
                # Events that arrived together leave together: one write (a send and an
                # HTTP chunk) for what the stream holds ready, not one per event. Whenever
                # the stream has to wait (where a failure or a restart can come from),
                # ``out`` has been written.
                out: list[bytes] = []
                async for chunk in stream:
                    if chunk.restart:
                        # The answer began again elsewhere; what the client has cannot be voided.
                        why = "the stream failed after content and could only be restarted, not continued"
                        await _cut(request, response, face.dialect, Failure(502, "upstream_failed", why))
                        return response, None
                    data = writer.chunk(chunk)
                    if data is not None:
                        out.append(data)
                    if out and not stream.ready:
                        await response.write(out[0] if len(out) == 1 else b"".join(out))
                        out.clear()
            except LLMError as exc:
                await _cut(request, response, face.dialect, failure_of(exc))
                return response, None
            except ConnectionResetError:
                # The client left between two chunks; leaving the block closes the upstream.
                return response, None
            reply = stream.response
            await response.write(writer.closing(reply))
        await response.write_eof()
        return response, reply

    # --- embeddings, models, operations ---------------------------------------------------------

    async def _embeddings(self, request: web.BaseRequest, rid: str) -> web.StreamResponse:
        intake = await self._intake(request, rid, "openai", lambda raw: decode(raw, openai_wire.EmbeddingBody), _model_named)
        if isinstance(intake, web.Response):
            return intake
        client, body, routing = intake
        texts = [body.input] if isinstance(body.input, str) else body.input
        grant = await self._admit(client, lambda: sum(len(t) for t in texts) // 4 + 1) if client is not None else None
        if isinstance(grant, Failure):
            return self._failure(rid, "openai", grant, client.headers(_now()) if client else None)
        settled = False
        try:
            reply = await self.rt.embed(texts, dimensions=body.dimensions, **routing)
            if client is not None and grant is not None:
                client.settle(grant, reply.usage.input_tokens, reply.cost_usd, _now())
                settled = True
        except LLMError as exc:
            return self._failure(rid, "openai", failure_of(exc))
        finally:
            if not settled and client is not None and grant is not None:
                client.release(grant, _now())
        headers = self._reply_headers(rid, client, reply.endpoint, len(reply.attempts), cost_of(reply))
        return web.Response(body=openai_wire.embedding_list(reply, body.encoding_format), content_type=_JSON, headers=headers)

    async def _count_tokens(self, request: web.BaseRequest, rid: str) -> web.StreamResponse:
        """Anthropic's token count of a prompt, by the runtime's estimator for the route's first model."""
        intake = await self._intake(
            request, rid, "anthropic", lambda raw: decode(raw, anthropic_wire.CountTokensBody), _model_named
        )
        if isinstance(intake, web.Response):
            return intake
        _, body, _ = intake  # a key and a route it may use are all a count needs
        prompt = ChatRequest(
            messages=anthropic_wire.conversation(body), tools=anthropic_wire.function_tools(body.tools),
            model=self._model_of(body.model),
        )
        return web.Response(body=msgspec.json.encode({"input_tokens": estimate_request_tokens(prompt)}), content_type=_JSON)

    def _model_of(self, route: str) -> str:
        """The model of the first endpoint a route reaches (what its tokens are counted for)."""
        for ep in self.rt.endpoints:
            if route in (ep.name, ep.model, *ep.groups):
                return ep.model
        return route

    def _visible(self, request: web.BaseRequest) -> list[str] | Failure:
        client = self._authenticate(request)
        if isinstance(client, Failure):
            return client
        return [r for r in self.routes if client is None or client.allows(r)]

    async def _models(self, request: web.BaseRequest, rid: str) -> web.StreamResponse:
        visible = self._visible(request)
        if isinstance(visible, Failure):
            return self._failure(rid, "openai", visible)
        data = [_model_entry(r) for r in visible]
        # One document both clients read: OpenAI's list, with Anthropic's paging fields.
        page = {"object": "list", "data": data, "has_more": False, "first_id": visible[0] if visible else None,
                "last_id": visible[-1] if visible else None}
        return web.Response(body=msgspec.json.encode(page), content_type=_JSON)

    async def _model(self, request: web.BaseRequest, rid: str) -> web.StreamResponse:
        visible = self._visible(request)
        if isinstance(visible, Failure):
            return self._failure(rid, "openai", visible)
        name = request.path[len(_MODEL_PREFIX):]
        if name not in visible:
            return self._failure(rid, "openai", Failure(404, "model_not_found", f"no route named {name!r}", "model"))
        return web.Response(body=msgspec.json.encode(_model_entry(name)), content_type=_JSON)

    async def _live(self, request: web.BaseRequest, rid: str) -> web.StreamResponse:
        return web.json_response({"live": True})

    def ready(self) -> bool:
        """True when not draining and some endpoint can take traffic."""
        return not self.draining and any(s.state in ("healthy", "degraded") for s in self.rt.status())

    async def _ready(self, request: web.BaseRequest, rid: str) -> web.StreamResponse:
        ready = self.ready()
        return web.json_response({"ready": ready, "draining": self.draining}, status=200 if ready else 503)

    async def _status(self, request: web.BaseRequest, rid: str) -> web.StreamResponse:
        client = self._authenticate(request)
        if isinstance(client, Failure):
            return self._failure(rid, "openai", client)
        body = {
            "endpoints": self.rt.status(),
            "gateway": {"in_flight": self._in_flight, "draining": self.draining, "keys": [_key_status(k) for k in self.keys.keys]},
        }
        return web.Response(body=msgspec.json.encode(body), content_type=_JSON)

    async def _metrics(self, request: web.BaseRequest, rid: str) -> web.StreamResponse:
        client = self._authenticate(request)
        if isinstance(client, Failure):
            return self._failure(rid, "openai", client)
        text = exposition(self.rt.usage(), self.rt.status(), self.counts, self._in_flight, self.keys.keys)
        return web.Response(body=text.encode(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def _dialect(path: str) -> Dialect:
    """The dialect a refusal at the edge answers in, by the path (handlers know their own)."""
    return "anthropic" if path.startswith("/v1/messages") else "openai"


async def _cut(request: web.BaseRequest, response: web.StreamResponse, dialect: Dialect, failure: Failure) -> None:
    """End a stream after content: the error event, then the connection closes without the
    body's last chunk, so even a client that ignores the event sees a cut, never a clean end."""
    await response.write(error_event(dialect, failure))
    response.force_close()
    if request.transport is not None:
        request.transport.close()


def _now() -> float:
    return asyncio.get_running_loop().time()


def _routes(rt: Runtime) -> dict[str, dict[str, Any]]:
    """Every name a client may put in ``model``: groups and models route by ``model=``,
    endpoint names pin ``endpoint=`` (a model or group of the same name wins)."""
    routes: dict[str, dict[str, Any]] = {}
    for ep in rt.endpoints:
        for name in (*ep.groups, ep.model):
            if name:
                routes.setdefault(name, {"model": name})
    for ep in rt.endpoints:
        routes.setdefault(ep.name, {"endpoint": ep.name})
    return routes


def _model_entry(route: str) -> dict[str, Any]:
    """A route as a model entry in both dialects (OpenAI's object/owned_by, Anthropic's type/display_name)."""
    return {
        "id": route, "object": "model", "created": 0, "owned_by": "llm-runtime",
        "type": "model", "display_name": route, "created_at": "1970-01-01T00:00:00Z",
    }


def _key_status(key: ClientKey) -> dict[str, Any]:
    out: dict[str, Any] = {"name": key.name, "in_flight": key.limiter.in_flight}
    if key.budget is not None:
        out["budget_remaining"] = key.budget.remaining()
    return out
