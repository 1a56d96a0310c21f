"""Start, reuse and stop the LLM Serve app from a run's `LLMConfig`; hand out a client for it.

Ray must already be initialised by the caller: this module never decides which cluster to use.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import httpx

from visdiff.config import LLMConfig
from visdiff.errors import LLMError
from visdiff.llm.client import HTTPChatClient

if TYPE_CHECKING:
    from visdiff.serving.app import LLMAppArgs

logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 120.0


def app_args_from_config(cfg: LLMConfig) -> LLMAppArgs:
    """The Serve app's typed args for a run config (half precision only where there is a GPU)."""
    from visdiff.serving.app import LLMAppArgs

    return LLMAppArgs(
        engine=cfg.engine,  # type: ignore[arg-type]
        model=cfg.model,
        served_model_name=cfg.served_model_name,
        num_replicas=cfg.num_replicas,
        num_cpus=cfg.num_cpus,
        num_gpus=cfg.num_gpus,
        precision="bf16" if cfg.num_gpus > 0 else "fp32",
    )


def _serve_http_address(cfg: LLMConfig) -> tuple[str, int]:
    """Where Serve's proxy really listens: an earlier `serve.start` on this cluster wins over
    our options, so read them back instead of trusting cfg."""
    try:
        from ray.serve.context import _get_global_client  # no public getter for http options

        options = _get_global_client().http_config
        host, port = str(options.host or cfg.http_host), int(options.port)
    except Exception:  # private API moved: fall back to what we asked for
        return cfg.http_host, cfg.http_port
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if (host, port) != (cfg.http_host, cfg.http_port):
        logger.warning(
            "Serve was already started on %s:%d on this cluster; llm.http_host/http_port "
            "(%s:%d) are ignored",
            host,
            port,
            cfg.http_host,
            cfg.http_port,
        )
    return host, port


def _route_prefix(prefix: str) -> str:
    prefix = "/" + prefix.strip("/")
    return "" if prefix == "/" else prefix


def _base_url(host: str, port: int, route_prefix: str) -> str:
    return f"http://{host}:{port}{_route_prefix(route_prefix)}/v1"


def _served_models(base_url: str) -> list[dict[str, Any]] | None:
    """GET /v1/models, or None while the proxy cannot route there yet."""
    try:
        response = httpx.get(f"{base_url}/models", timeout=5.0)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    data = response.json().get("data")
    return data if isinstance(data, list) else None


def _serves(cfg: LLMConfig, models: list[dict[str, Any]]) -> bool:
    """True when the running app answers to our served name with our model underneath."""
    for card in models:
        if card.get("id") == cfg.served_model_name:
            root = card.get("root")
            return root is None or root == cfg.model
    return False


def _wait_ready(base_url: str, timeout_s: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _served_models(base_url) is not None:
            return
        time.sleep(0.5)
    raise LLMError(f"LLM Serve app did not answer at {base_url}/models within {timeout_s:g} s")


def _running_route_prefix(app_name: str) -> str | None:
    """Route prefix of a RUNNING app of that name, else None."""
    from ray import serve
    from ray.serve.schema import ApplicationStatus

    status = serve.status().applications.get(app_name)
    if status is None or status.status != ApplicationStatus.RUNNING:
        return None
    try:
        from ray.serve.context import _get_global_client
        from ray.serve.schema import ServeInstanceDetails

        details = ServeInstanceDetails(**_get_global_client().get_serve_details())
        app = details.applications.get(app_name)
        if app is not None and app.route_prefix:
            return app.route_prefix
    except Exception:
        pass
    return "/"


def start_llm_app(cfg: LLMConfig) -> str:
    """Deploy (or reuse) the LLM app; returns its OpenAI base URL, `http://host:port/prefix/v1`."""
    from ray import serve

    from visdiff.serving.app import build_app

    serve.start(http_options={"host": cfg.http_host, "port": cfg.http_port})
    host, port = _serve_http_address(cfg)

    running_prefix = _running_route_prefix(cfg.app_name)
    if running_prefix is not None:
        base_url = _base_url(host, port, running_prefix)
        models = _served_models(base_url)
        if models is not None and _serves(cfg, models):
            logger.info("reusing the running Serve app '%s' at %s", cfg.app_name, base_url)
            return base_url
        logger.info("Serve app '%s' serves another model; redeploying it", cfg.app_name)

    app = build_app(app_args_from_config(cfg))
    try:
        serve.run(app, name=cfg.app_name, route_prefix=_route_prefix(cfg.route_prefix) or "/")
    except RuntimeError as exc:
        serve.delete(cfg.app_name)  # do not leave a failed app retrying replicas
        raise LLMError(f"LLM Serve app '{cfg.app_name}' failed to deploy: {exc}") from None
    base_url = _base_url(host, port, cfg.route_prefix)
    _wait_ready(base_url)
    logger.info("LLM Serve app '%s' (%s) ready at %s", cfg.app_name, cfg.model, base_url)
    return base_url


def stop_llm_app(cfg: LLMConfig) -> None:
    """Delete the app (a no-op when it is not deployed); Serve itself keeps running."""
    from ray import serve

    if cfg.app_name in serve.status().applications:
        serve.delete(cfg.app_name)


def chat_client_for(cfg: LLMConfig, base_url: str) -> HTTPChatClient:
    """Client for our Serve app (no key) or an external endpoint (key from cfg.api_key_env)."""
    if cfg.backend == "external":
        return HTTPChatClient.from_env(
            base_url,
            cfg.external_model or cfg.model,
            cfg.api_key_env,
            timeout_s=cfg.timeout_s,
        )
    return HTTPChatClient(base_url, cfg.served_model_name, timeout_s=cfg.timeout_s)
