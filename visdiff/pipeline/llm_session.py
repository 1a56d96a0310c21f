"""The one seam to an LLM for a run: our own Serve app (started here, stopped after unless
keep_running), or any external OpenAI-compatible URL. Used for the proposer's `llm` and for the
judge's own `evaluate.llm`."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from visdiff.config import LLMConfig
from visdiff.llm.client import ChatClient, HTTPChatClient

log = logging.getLogger(__name__)


@contextmanager
def open_llm(cfg: LLMConfig) -> Iterator[ChatClient | None]:
    """A client for `cfg`; None for backend=none. Ray must be up for backend=serve."""
    if cfg.backend == "none":
        yield None
        return
    if cfg.backend == "external":
        assert cfg.base_url is not None  # validated in config
        client = HTTPChatClient.from_env(
            cfg.base_url,
            cfg.external_model or cfg.served_model_name,
            cfg.api_key_env,
            timeout_s=cfg.timeout_s,
            max_answer_bytes=cfg.max_answer_bytes,
        )
        try:
            yield client
        finally:
            client.close()
        return
    from visdiff.serving.launch import chat_client_for, start_llm_app, stop_llm_app

    base_url = start_llm_app(cfg)
    log.info("%s serving at %s", cfg.app_name, base_url)
    try:
        yield chat_client_for(cfg, base_url)
    finally:
        if not cfg.keep_running:
            stop_llm_app(cfg)
