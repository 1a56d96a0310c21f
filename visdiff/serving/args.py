"""Typed arguments of the LLM Serve app, shared by the transformers app and the vLLM builder."""

from __future__ import annotations

import hashlib
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from visdiff.config import TINY

_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
IDENTITY_SERVICE = "visdiff-llm-app"
IDENTITY_ROUTE = "/visdiff/identity"  # below the app's route prefix, like /healthz


class AutoscalingArgs(BaseModel):
    """Serve autoscaling: replicas follow the number of requests in flight per replica."""

    model_config = ConfigDict(extra="forbid")

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(2.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> AutoscalingArgs:
        if self.max_replicas < self.min_replicas:
            raise ValueError(
                f"autoscaling.max_replicas ({self.max_replicas}) must be >= "
                f"min_replicas ({self.min_replicas})"
            )
        return self


class LLMAppArgs(BaseModel):
    """Typed `args:` of the Serve application (unknown keys are rejected to catch typos)."""

    model_config = ConfigDict(extra="forbid")

    engine: Literal["transformers", "vllm"] = "transformers"
    model: str = TINY  # hub id, local folder, "tiny" or "tiny-vlm" (random init, offline)
    served_model_name: str = "visdiff-llm"  # the `model` clients must send
    num_replicas: int | None = Field(None, ge=1)  # fixed size; default 1 without autoscaling
    autoscaling: AutoscalingArgs | None = None
    max_ongoing_requests: int = Field(4, ge=1)
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    # vLLM serving a VLM: images it accepts in one request (the vlm proposer sends 2 grids).
    max_images_per_prompt: int = Field(4, ge=1, le=64)
    # SHA-256 (hex) of the key every route but /healthz requires as `Authorization: Bearer`.
    # A digest, never the key: args are stored by Serve and shown by its dashboard and status.
    api_key_sha256: str | None = None

    @field_validator("api_key_sha256")
    @classmethod
    def _hex_digest(cls, value: str | None) -> str | None:
        if value is not None and not _SHA256_HEX.fullmatch(value):
            raise ValueError('api_key_sha256 must be 64 hex digits: printf %s "$KEY" | sha256sum')
        return None if value is None else value.lower()

    @model_validator(mode="after")
    def _one_scaling_mode(self) -> LLMAppArgs:
        if self.num_replicas is not None and self.autoscaling is not None:
            raise ValueError("give either num_replicas or autoscaling, not both")
        return self


def key_digest(key: str) -> str:
    """What the app stores and compares in place of the key itself."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def app_identity(args: LLMAppArgs, app_name: str) -> dict[str, Any]:
    """Who the app is, as its /visdiff/identity route answers and the launcher expects it: the
    app name, engine and model, and whether it checks a key (never the key or its digest)."""
    return {
        "service": IDENTITY_SERVICE,
        "app_name": app_name,
        "engine": args.engine,
        "model": args.model,
        "served_model_name": args.served_model_name,
        "requires_key": args.api_key_sha256 is not None,
    }


def scaling_options(args: LLMAppArgs) -> dict[str, Any]:
    """Replica count or autoscaling, requests per replica, and how often a stopping replica
    looks for requests still in flight: the same for both engines."""
    options: dict[str, Any] = {
        "max_ongoing_requests": args.max_ongoing_requests,
        "graceful_shutdown_wait_loop_s": SHUTDOWN_POLL_S,
    }
    if args.autoscaling is not None:
        options["autoscaling_config"] = args.autoscaling.model_dump()
    else:
        options["num_replicas"] = args.num_replicas or 1
    return options


# Seconds between Serve's health checks of a replica (Serve's default: 10). A lost replica is
# replaced after about this long; meanwhile the client's retries wait in the proxy's queue, so a
# short period turns a replica crash into seconds of delay instead of a failed attempt.
HEALTH_CHECK_PERIOD_S = 2.0
# Seconds between a stopping replica's checks for requests in flight (Serve's default: 2, which
# made deleting the app at the end of a run take ~3 s; the replica still waits for every
# request in flight, up to Serve's graceful_shutdown_timeout_s).
SHUTDOWN_POLL_S = 0.2


def deployment_options(args: LLMAppArgs) -> dict[str, Any]:
    """Serve deployment options for the transformers engine."""
    return {
        **scaling_options(args),
        "health_check_period_s": HEALTH_CHECK_PERIOD_S,
        "ray_actor_options": {"num_cpus": args.num_cpus, "num_gpus": args.num_gpus},
    }
