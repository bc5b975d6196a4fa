"""The OpenAI-compatible HTTP API over pvq.Llama (Starlette): routes, request checks, the API key, and every
error as OpenAI's error object. Generation itself is generation.Generation; the contexts are slots.Slots."""
from __future__ import annotations

import hmac
import json
import math
import os
from contextlib import contextmanager

import jinja2
import pydantic
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .._lib import ContextFullError
from .errors import ApiError
from .generation import Generation
from .schema import ChatRequest, CompletionRequest
from .slots import Slots

MAX_BODY = 1 << 20     # bytes of a request body; more is a 413
DRAIN_LIMIT = 64 << 20  # an oversized body is read (and dropped) up to this, so the client gets its 413


def _error_response(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers={k: str(v) for k, v in e.headers.items()})


def _bad_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of the range of a double")
    return value


async def _read_json(request: Request, limit: int) -> dict:
    too_big = ApiError(413, f"the request body is larger than {limit} bytes", code="request_too_large")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > DRAIN_LIMIT:
        raise too_big
    body, size = bytearray(), 0
    async for part in request.stream():
        size += len(part)
        if size > DRAIN_LIMIT:
            raise too_big
        if size <= limit:
            body += part
    if size > limit:
        raise too_big
    try:
        value = json.loads(bytes(body), parse_constant=_bad_constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as e:  # RecursionError: nesting deeper than Python's parser goes
        raise ApiError(400, f"the request body is not valid JSON: {str(e)[:200]}", code="invalid_json") from None
    if not isinstance(value, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    return value


def _validated(model, body: dict):
    try:
        return model.model_validate(body)
    except pydantic.ValidationError as e:
        first = e.errors(include_url=False)[0]
        param = ".".join(str(x) for x in first["loc"]) or None
        raise ApiError(400, f"{param}: {first['msg']}" if param else first["msg"], param=param,
                       code=first["type"]) from None


@contextmanager
def _model_errors(prompt_param: str):
    """The bindings' refusals of a request as 400s (a prompt too long, a template's raise_exception, an
    unsupported option); anything else is a server error and propagates."""
    try:
        yield
    except ContextFullError as e:
        raise ApiError(400, str(e), param=prompt_param, code="context_length_exceeded") from None
    except (ValueError, NotImplementedError, jinja2.TemplateError) as e:
        raise ApiError(400, str(e)[:500], code="invalid_value") from None


def _checked_stream(chunks, prompt_param: str):
    with _model_errors(prompt_param):
        yield from chunks


class Server:
    """The app's state: the slots, the model's name, the API key."""

    def __init__(self, slots: Slots, model_alias: str, api_key: str | None, max_body: int = MAX_BODY):
        self.slots, self.alias, self.api_key, self.max_body = slots, model_alias, api_key, max_body
        self.created = int(os.path.getmtime(slots.all[0].model_path))

    def _check(self, request: Request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
            raise ApiError(401, "invalid or missing API key (Authorization: Bearer KEY)", code="invalid_api_key")

    async def _request(self, request: Request, schema):
        self._check(request)
        req = _validated(schema, await _read_json(request, self.max_body))
        if req.model is not None and req.model != self.alias:
            raise ApiError(404, f"the model '{req.model}' does not exist; this server has '{self.alias}'",
                           param="model", code="model_not_found")
        unsupported = req.unsupported()
        if unsupported:
            raise ApiError(400, f"{unsupported} is not supported by pvq", param=unsupported, code="unsupported_value")
        return req

    @staticmethod
    def _check_room(n_prompt: int, max_tokens: int | None, n_ctx: int) -> None:
        if max_tokens is not None and n_prompt + max_tokens > n_ctx:
            raise ApiError(400, f"this model's context holds {n_ctx} tokens; the prompt has {n_prompt} and "
                                f"max_tokens asks for {max_tokens} more", param="max_tokens",
                           code="context_length_exceeded")

    async def completions(self, request: Request):
        req = await self._request(request, CompletionRequest)
        if isinstance(req.prompt, list):
            n_vocab = self.slots.all[0].n_vocab()
            if not req.prompt or not all(0 <= t < n_vocab for t in req.prompt):
                raise ApiError(400, f"prompt: token ids must be a non-empty list of ids in 0..{n_vocab - 1}",
                               param="prompt", code="invalid_value")
        if req.logprobs is not None and not self.slots.all[0]._logits_all:
            raise ApiError(400, "logprobs needs the server started with --logits_all true", param="logprobs",
                           code="unsupported_value")

        def run(llm):
            llm.reset()  # a response depends on its request alone, not on what the slot ran before
            with _model_errors("prompt"):
                self._check_room(len(llm._prompt_tokens(req.prompt)), req.max_tokens, llm.n_ctx())
                out = llm.create_completion(req.prompt, echo=req.echo, logprobs=req.logprobs, stream=req.stream,
                                            model=self.alias, **req.sampling())
            return _checked_stream(out, "prompt") if req.stream else out
        return Generation(self.slots, run, req.stream)

    async def chat_completions(self, request: Request):
        req = await self._request(request, ChatRequest)
        if req.logprobs and not self.slots.all[0]._logits_all:
            raise ApiError(400, "logprobs needs the server started with --logits_all true", param="logprobs",
                           code="unsupported_value")
        messages = [m.for_template() for m in req.messages]
        template = dict(tools=req.tools, tool_choice=req.tool_choice, functions=req.functions,
                        function_call=req.function_call)

        def run(llm):
            llm.reset()
            with _model_errors("messages"):
                self._check_room(len(llm._chat_prompt_tokens(messages, **template)), req.max_tokens, llm.n_ctx())
                out = llm.create_chat_completion(messages, **template, stream=req.stream, model=self.alias,
                                                 logprobs=req.logprobs, top_logprobs=req.top_logprobs,
                                                 **req.sampling())
            return _checked_stream(out, "messages") if req.stream else out
        return Generation(self.slots, run, req.stream)

    async def models(self, request: Request):
        self._check(request)
        return JSONResponse({"object": "list", "data": [{"id": self.alias, "object": "model",
                                                          "created": self.created, "owned_by": "pvq"}]})

    async def health(self, request: Request):
        """Open without the API key, as llama.cpp's /health: liveness and how busy the slots are."""
        return JSONResponse({"status": "ok", "slots": len(self.slots.all), "slots_idle": len(self.slots.idle),
                             "queued": len(self.slots.waiting)})


def create_app(server: Server) -> Starlette:
    async def api_error(request, e: ApiError):
        return _error_response(e)

    async def http_error(request, e: HTTPException):
        message = f"unknown request URL: {request.method} {request.url.path}" if e.status_code == 404 else e.detail
        return _error_response(ApiError(e.status_code, message, code="unknown_url" if e.status_code == 404 else None))

    async def server_error(request, e: Exception):
        return _error_response(ApiError(500, f"internal error: {type(e).__name__}", type="server_error"))

    routes = [Route("/v1/models", server.models, methods=["GET"]),
              Route("/v1/completions", server.completions, methods=["POST"]),
              Route("/v1/chat/completions", server.chat_completions, methods=["POST"]),
              Route("/health", server.health, methods=["GET"])]
    app = Starlette(routes=routes, exception_handlers={ApiError: api_error, HTTPException: http_error,
                                                       Exception: server_error})
    return app
