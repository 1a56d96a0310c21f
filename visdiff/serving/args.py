"""Typed arguments of the LLM Serve app, shared by the transformers app and the vLLM builder."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from visdiff.config import TINY


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

    @model_validator(mode="after")
    def _one_scaling_mode(self) -> LLMAppArgs:
        if self.num_replicas is not None and self.autoscaling is not None:
            raise ValueError("give either num_replicas or autoscaling, not both")
        return self


def scaling_options(args: LLMAppArgs) -> dict[str, Any]:
    """Replica count or autoscaling, and requests per replica: the same for both engines."""
    options: dict[str, Any] = {"max_ongoing_requests": args.max_ongoing_requests}
    if args.autoscaling is not None:
        options["autoscaling_config"] = args.autoscaling.model_dump()
    else:
        options["num_replicas"] = args.num_replicas or 1
    return options


def deployment_options(args: LLMAppArgs) -> dict[str, Any]:
    """Serve deployment options for the transformers engine."""
    return {
        **scaling_options(args),
        "ray_actor_options": {"num_cpus": args.num_cpus, "num_gpus": args.num_gpus},
    }
