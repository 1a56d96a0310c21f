"""Start, reuse and stop the LLM Serve app from a run's `LLMConfig`; hand out a client for it.

Ray must already be initialised by the caller: this module never decides which cluster to use.
Only Serve's public API is used (`serve.start/run/status/delete`): the app is found where the
config says it is (llm.http_host, llm.http_port, llm.route_prefix).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import httpx

from visdiff.config import LLMConfig
from visdiff.errors import LLMError
from visdiff.llm.client import HTTPChatClient
from visdiff.serving.args import LLMAppArgs

logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 120.0


def app_args_from_config(cfg: LLMConfig) -> LLMAppArgs:
    """The Serve app's typed args for a run config (half precision only where there is a GPU)."""
    return LLMAppArgs(
        engine=cfg.engine,  # type: ignore[arg-type]
        model=cfg.model,
        served_model_name=cfg.served_model_name,
        num_replicas=cfg.num_replicas,
        num_cpus=cfg.num_cpus,
        num_gpus=cfg.num_gpus,
        precision="bf16" if cfg.num_gpus > 0 else "fp32",
    )


def _route_prefix(prefix: str) -> str:
    prefix = "/" + prefix.strip("/")
    return "" if prefix == "/" else prefix


def _base_url(host: str, port: int, route_prefix: str) -> str:
    if host in ("0.0.0.0", "::", ""):  # listening on every interface: connect over loopback
        host = "127.0.0.1"
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
    raise LLMError(
        f"LLM Serve app did not answer at {base_url}/models within {timeout_s:g} s; if Serve "
        "already runs on this cluster with other HTTP options (Serve logs 'The new HTTP config "
        "is ignored'), set llm.http_host/llm.http_port to them"
    )


def _is_running(app_name: str) -> bool:
    from ray import serve
    from ray.serve.schema import ApplicationStatus

    status = serve.status().applications.get(app_name)
    return status is not None and status.status == ApplicationStatus.RUNNING


def start_llm_app(cfg: LLMConfig) -> str:
    """Deploy (or reuse) the LLM app; returns its OpenAI base URL, `http://host:port/prefix/v1`."""
    from ray import serve

    from visdiff.serving.app import build_app

    serve.start(http_options={"host": cfg.http_host, "port": cfg.http_port})
    base_url = _base_url(cfg.http_host, cfg.http_port, cfg.route_prefix)

    if _is_running(cfg.app_name):
        models = _served_models(base_url)
        if models is not None and _serves(cfg, models):
            logger.info("reusing the running Serve app '%s' at %s", cfg.app_name, base_url)
            return base_url
        logger.info("Serve app '%s' serves another model or route; redeploying it", cfg.app_name)

    app = build_app(app_args_from_config(cfg))
    try:
        serve.run(app, name=cfg.app_name, route_prefix=_route_prefix(cfg.route_prefix) or "/")
    except RuntimeError as exc:
        serve.delete(cfg.app_name)  # do not leave a failed app retrying replicas
        raise LLMError(f"LLM Serve app '{cfg.app_name}' failed to deploy: {exc}") from None
    _wait_ready(base_url)
    logger.info("LLM Serve app '%s' (%s) ready at %s", cfg.app_name, cfg.model, base_url)
    return base_url


def stop_llm_app(cfg: LLMConfig) -> None:
    """Delete the app (a no-op when it is not deployed); Serve itself keeps running."""
    from ray import serve

    if cfg.app_name in serve.status().applications:
        serve.delete(cfg.app_name)


def chat_client_for(cfg: LLMConfig, base_url: str) -> HTTPChatClient:
    """Client for our Serve app: it answers to `served_model_name` and needs no key. Its
    identity (the answer cache's model key) is the engine and model behind that name."""
    return HTTPChatClient(
        base_url,
        cfg.served_model_name,
        identity=f"{cfg.engine}:{cfg.model}",
        timeout_s=cfg.timeout_s,
        max_answer_bytes=cfg.max_answer_bytes,
    )
