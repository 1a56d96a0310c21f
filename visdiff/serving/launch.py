"""Start, reuse and stop the LLM Serve app from a run's `LLMConfig`; hand out a client for it.

Ray must already be initialised by the caller: this module never decides which cluster to use.
Only Serve's public API is used (`serve.start/run/status/delete`): the app is found where the
config says it is (llm.http_host, llm.http_port, llm.route_prefix).

Nothing on the port is trusted for being there (issue #11): the port must be answered by Ray
Serve's proxy (its `/-/routes`), and the app behind our prefix must name itself ours
(`/visdiff/identity`: app name, engine, model) before a prompt is sent to it. A proxy that
listens beyond loopback needs a key (llm.serve_api_key_env): the app gets only its digest.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import httpx

from visdiff.config import LLMConfig, is_loopback_host
from visdiff.errors import ConfigError, LLMError
from visdiff.llm.client import HTTPChatClient
from visdiff.serving.args import IDENTITY_ROUTE, LLMAppArgs, app_identity, key_digest

logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 120.0
PROXY_TIMEOUT_S = 30.0
MIN_KEY_CHARS = 16
# What Serve's proxy answers on /-/routes before any app is deployed (HTTP 503).
_NO_ROUTES_YET = "Route table is not populated yet"


def serve_api_key(cfg: LLMConfig) -> str | None:
    """The key the app will require, read from the env var named by `serve_api_key_env`; None
    when none is configured. A proxy beyond loopback without a key is refused here too (the
    config check covers runs, this covers every other caller)."""
    env = cfg.serve_api_key_env
    if not env:
        if not is_loopback_host(cfg.http_host):
            raise ConfigError(
                f"llm.http_host={cfg.http_host} would serve the LLM beyond loopback without a "
                "key: set llm.serve_api_key_env (an env var holding a key), or "
                "llm.http_host=127.0.0.1"
            )
        return None
    key = os.environ.get(env, "")
    if len(key) < MIN_KEY_CHARS:
        problem = "is not set" if not key else f"holds fewer than {MIN_KEY_CHARS} characters"
        raise ConfigError(
            f"llm.serve_api_key_env names {env}, which {problem}: export {env}=$(openssl rand "
            "-hex 32) before the run"
        )
    return key


def app_args_from_config(cfg: LLMConfig, *, api_key_sha256: str | None = None) -> LLMAppArgs:
    """The Serve app's typed args for a run config (half precision only where there is a GPU)."""
    return LLMAppArgs(
        engine=cfg.engine,  # type: ignore[arg-type]
        model=cfg.model,
        served_model_name=cfg.served_model_name,
        num_replicas=cfg.num_replicas,
        num_cpus=cfg.num_cpus,
        num_gpus=cfg.num_gpus,
        precision="bf16" if cfg.num_gpus > 0 else "fp32",
        api_key_sha256=api_key_sha256,
    )


def _route_prefix(prefix: str) -> str:
    prefix = "/" + prefix.strip("/")
    return "" if prefix == "/" else prefix


def _root_url(host: str, port: int) -> str:
    if host in ("0.0.0.0", "::", ""):  # listening on every interface: connect over loopback
        host = "127.0.0.1"
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _base_url(host: str, port: int, route_prefix: str) -> str:
    return f"{_root_url(host, port)}{_route_prefix(route_prefix)}/v1"


def _get(url: str, key: str | None = None) -> httpx.Response | None:
    """GET with the key (when there is one); None while nothing answers there."""
    headers = {"Authorization": f"Bearer {key}"} if key else None
    try:
        return httpx.get(url, headers=headers, timeout=5.0)
    except httpx.HTTPError:
        return None


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _check_port_is_serve(cfg: LLMConfig, timeout_s: float = PROXY_TIMEOUT_S) -> None:
    """Refuse a port answered by anything but Ray Serve's proxy: a foreign server there would
    otherwise get the run's prompts (and its answers would be taken for our model's).

    Nothing answering yet is fine (the proxy may still be starting; readiness is waited for
    after the deploy)."""
    root = _root_url(cfg.http_host, cfg.http_port)
    deadline = time.monotonic() + timeout_s
    while (response := _get(f"{root}/-/routes")) is None:
        if time.monotonic() > deadline:
            return
        time.sleep(0.5)
    body = _json(response)
    if response.status_code == 200 and isinstance(body, dict):
        return
    if response.status_code == 503 and _NO_ROUTES_YET in response.text:
        return
    raise LLMError(
        f"port {cfg.http_port} on {cfg.http_host} is answered by a server that is not Ray "
        f"Serve's proxy (GET /-/routes: HTTP {response.status_code}), so it is not our LLM app: "
        "stop that server, or set llm.http_port to a free port"
    )


def _identity(app_url: str, key: str | None) -> tuple[int, Any]:
    """(HTTP status, body) of the app's identity route; (0, None) while nothing answers."""
    response = _get(f"{app_url}{IDENTITY_ROUTE}", key)
    return (0, None) if response is None else (response.status_code, _json(response))


def _serves(cfg: LLMConfig, base_url: str, key: str | None) -> tuple[bool, str]:
    """vLLM's app has no identity route: our served name with our model underneath, on a route
    that this cluster's Serve gives to our app name."""
    prefix = _route_prefix(cfg.route_prefix) or "/"
    routes = _get(f"{_root_url(cfg.http_host, cfg.http_port)}/-/routes")
    owner = (_json(routes) or {}).get(prefix) if routes is not None else None
    if owner != cfg.app_name:
        return False, f"route {prefix} belongs to {owner!r}"
    models = _get(f"{base_url}/models", key)
    data = (_json(models) or {}).get("data") if models is not None else None
    for card in data if isinstance(data, list) else []:
        if isinstance(card, dict) and card.get("id") == cfg.served_model_name:
            root = card.get("root")
            return root in (None, cfg.model), f"it serves {root!r}"
    return False, f"no model '{cfg.served_model_name}' listed"


def _is_ours(
    cfg: LLMConfig, base_url: str, key: str | None, expected: dict[str, Any]
) -> tuple[bool, str]:
    """Whether the app behind our prefix is the one this config deploys, and what was seen."""
    if cfg.engine == "vllm":
        return _serves(cfg, base_url, key)
    status, body = _identity(base_url.removesuffix("/v1"), key)
    if status == 200:
        return body == expected, f"it says it is {body}"
    return False, "nothing answers" if status == 0 else f"identity answers HTTP {status}"


def _wait_ready(
    cfg: LLMConfig,
    base_url: str,
    key: str | None,
    expected: dict[str, Any],
    timeout_s: float = READY_TIMEOUT_S,
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        ours, seen = _is_ours(cfg, base_url, key, expected)
        if ours:
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    raise LLMError(
        f"LLM Serve app '{cfg.app_name}' did not answer as itself at {base_url} within "
        f"{timeout_s:g} s ({seen}); if Serve already runs on this cluster with other HTTP "
        "options (Serve logs 'The new HTTP config is ignored'), set llm.http_host/llm.http_port "
        "to them"
    )


def _is_running(app_name: str) -> bool:
    from ray import serve
    from ray.serve.schema import ApplicationStatus

    status = serve.status().applications.get(app_name)
    return status is not None and status.status == ApplicationStatus.RUNNING


def start_llm_app(cfg: LLMConfig) -> str:
    """Deploy (or reuse) the LLM app; returns its OpenAI base URL, `http://host:port/prefix/v1`.

    A running app is reused only when it says it is ours (same app name, engine, model and
    key requirement); a foreign server on the port is an error, never a fallback."""
    from ray import serve

    from visdiff.serving.app import build_app

    key = serve_api_key(cfg)
    args = app_args_from_config(cfg, api_key_sha256=key_digest(key) if key else None)
    expected = app_identity(args, cfg.app_name)
    serve.start(http_options={"host": cfg.http_host, "port": cfg.http_port})
    base_url = _base_url(cfg.http_host, cfg.http_port, cfg.route_prefix)
    _check_port_is_serve(cfg)

    if _is_running(cfg.app_name):
        ours, seen = _is_ours(cfg, base_url, key, expected)
        if ours:
            logger.info("reusing the running Serve app '%s' at %s", cfg.app_name, base_url)
            return base_url
        logger.info("Serve app '%s' is not this config's (%s); redeploying it", cfg.app_name, seen)

    app = build_app(args)
    try:
        serve.run(app, name=cfg.app_name, route_prefix=_route_prefix(cfg.route_prefix) or "/")
    except RuntimeError as exc:
        serve.delete(cfg.app_name)  # do not leave a failed app retrying replicas
        raise LLMError(f"LLM Serve app '{cfg.app_name}' failed to deploy: {exc}") from None
    _wait_ready(cfg, base_url, key, expected)
    logger.info("LLM Serve app '%s' (%s) ready at %s", cfg.app_name, cfg.model, base_url)
    return base_url


def stop_llm_app(cfg: LLMConfig) -> None:
    """Delete the app (a no-op when it is not deployed); Serve itself keeps running."""
    from ray import serve

    if cfg.app_name in serve.status().applications:
        serve.delete(cfg.app_name)


def chat_client_for(cfg: LLMConfig, base_url: str) -> HTTPChatClient:
    """Client for our Serve app: it answers to `served_model_name`, with the key from the env
    var named by `serve_api_key_env` when there is one (never the key itself in its settings).
    Its identity (the answer cache's model key) is the engine and model behind that name."""
    return HTTPChatClient.from_env(
        base_url,
        cfg.served_model_name,
        cfg.serve_api_key_env,
        identity=f"{cfg.engine}:{cfg.model}",
        timeout_s=cfg.timeout_s,
        max_answer_bytes=cfg.max_answer_bytes,
    )
