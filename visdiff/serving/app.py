"""Ray Serve application hosting the proposer LLM (or VLM) behind OpenAI's chat-completions API.

Routes (below the app's route prefix): POST /v1/chat/completions, GET /v1/models, GET /healthz,
and GET /visdiff/identity (who this app is: app name, engine, model; the launcher checks it
before it trusts a server on its port). With `api_key_sha256` in its args, every route but
/healthz needs `Authorization: Bearer <key>` (401 otherwise): the launcher sets it whenever the
proxy listens beyond loopback.
Every error answers in OpenAI's `{"error": {...}}` shape with a meaningful status (400 invalid
request, 404 unknown model or route, 500 engine failure), so any OpenAI client reports it well.
Messages may carry images as OpenAI `image_url` parts with base64 `data:` URLs when the model is
a VLM (`models.vlm.is_vlm`); a remote image URL, an oversized or undecodable image, or an image
sent to a text-only model is a 400 whose message names the fix.

Deploy from Python with `serve.run(build_app(LLMAppArgs(...)))` or from a Serve config whose
`import_path` is `visdiff.serving.app:build_app` (see deployments/*.yaml).
"""

# No `from __future__ import annotations` here: Serve reads build_app's parameter annotation at
# runtime to validate YAML `args:` into LLMAppArgs, and FastAPI reads the route signatures.

import asyncio
import hmac
import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from ray import serve
from ray.serve import Application
from starlette.exceptions import HTTPException as StarletteHTTPException

from visdiff.errors import InputError
from visdiff.llm.protocol import (
    ChatCompletionRequest,
    ErrorInfo,
    ErrorResponse,
    ModelCard,
    ModelList,
)
from visdiff.serving.args import (
    IDENTITY_ROUTE,
    LLMAppArgs,
    app_identity,
    deployment_options,
    key_digest,
)

logger = logging.getLogger(__name__)

DEPLOYMENT_NAME = "VisdiffLLM"


def _error(
    status: int,
    message: str,
    kind: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = ErrorResponse(error=ErrorInfo(message=message, type=kind, param=param, code=code))
    return JSONResponse(status_code=status, content=body.model_dump(), headers=headers)


def _bearer_token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _app_name() -> str:
    """The Serve application this replica belongs to (its name is given at deploy time, not in
    the args)."""
    try:
        return serve.get_replica_context().replica_id.deployment_id.app_name
    except Exception:  # outside a replica (never in Serve): no name to report
        return ""


def _validation_message(exc: ValidationError | RequestValidationError) -> tuple[str, str | None]:
    parts = []
    first_param: str | None = None
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        first_param = first_param or loc or None
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts) or "invalid request", first_param


fastapi_app = FastAPI(title="visdiff LLM", docs_url=None, redoc_url=None, openapi_url=None)


@fastapi_app.exception_handler(RequestValidationError)
async def _on_validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    message, param = _validation_message(exc)
    return _error(400, message, "invalid_request_error", param=param)


@fastapi_app.exception_handler(StarletteHTTPException)
async def _on_http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    return _error(exc.status_code, str(exc.detail), kind)


@serve.deployment(name=DEPLOYMENT_NAME)
@serve.ingress(fastapi_app)
class LLMDeployment:
    """One replica = one engine. Generation runs in a worker thread so that health checks and
    /v1/models stay responsive and a few requests can be in flight at once."""

    def __init__(self, args: dict[str, Any]) -> None:
        from visdiff.serving.engines import TransformersChatEngine

        self._args = LLMAppArgs.model_validate(args)
        self._engine = TransformersChatEngine(
            self._args.model,
            num_gpus=self._args.num_gpus,
            precision=self._args.precision,
            served_model_name=self._args.served_model_name,
        )

    def _denied(self, request: Request) -> JSONResponse | None:
        """401 unless the request carries the key (when the app has one); compared as digests
        in constant time, so neither the key nor its length leaks through timing."""
        expected = self._args.api_key_sha256
        if expected is None:
            return None
        token = _bearer_token(request)
        if token is not None and hmac.compare_digest(key_digest(token), expected):
            return None
        return _error(
            401,
            "missing or wrong API key: send 'Authorization: Bearer <key>' with the key from the "
            "env var named by llm.serve_api_key_env",
            "invalid_request_error",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )

    @fastapi_app.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @fastapi_app.get(IDENTITY_ROUTE)
    async def identity(self, request: Request) -> JSONResponse:
        if (denied := self._denied(request)) is not None:
            return denied
        return JSONResponse(content=app_identity(self._args, _app_name()))

    @fastapi_app.get("/v1/models")
    async def models(self, request: Request) -> JSONResponse:
        if (denied := self._denied(request)) is not None:
            return denied
        card = ModelCard(id=self._args.served_model_name, root=self._args.model)
        return JSONResponse(content=ModelList(data=[card]).model_dump())

    @fastapi_app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> JSONResponse:
        if (denied := self._denied(request)) is not None:
            return denied
        try:
            payload = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError) as exc:
            return _error(400, f"request body is not valid JSON: {exc}", "invalid_request_error")
        if not isinstance(payload, dict):
            return _error(400, "request body must be a JSON object", "invalid_request_error")
        try:
            chat_request = ChatCompletionRequest.model_validate(payload)
        except ValidationError as exc:
            message, param = _validation_message(exc)
            return _error(400, message, "invalid_request_error", param=param)
        served = self._args.served_model_name
        if chat_request.model != served:
            return _error(
                404,
                f"The model '{chat_request.model}' does not exist; this server serves '{served}'",
                "invalid_request_error",
                param="model",
                code="model_not_found",
            )
        try:
            response = await asyncio.to_thread(self._engine.chat, chat_request)
        except InputError as exc:
            return _error(400, str(exc), "invalid_request_error", param="messages")
        except Exception as exc:  # the engine's failure must reach the client as a 500
            logger.exception("generation failed")
            return _error(500, f"generation failed: {type(exc).__name__}: {exc}", "server_error")
        return JSONResponse(content=response.model_dump())


def build_app(args: LLMAppArgs) -> Application:
    """Serve application builder (typed args: Serve validates YAML `args:` into LLMAppArgs)."""
    if isinstance(args, dict):
        args = LLMAppArgs.model_validate(args)
    if args.engine == "vllm":
        from visdiff.serving.vllm_app import build_vllm_app

        return build_vllm_app(args)
    return LLMDeployment.options(**deployment_options(args)).bind(args.model_dump())
