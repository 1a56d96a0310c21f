"""Batch captioning with a vision-language model on vLLM (GPU clusters), the alternative to the
transformers captioner for large samples: the per-row request and result mapping and the engine
config. `visdiff.pipeline.graph` builds the `ray.data.llm` processor from them; everything here
runs without a GPU or Ray."""

from __future__ import annotations

import base64
import mimetypes
from typing import Any

from visdiff import schema
from visdiff.config import CaptionerConfig
from visdiff.errors import ModelUnavailableError

DEFAULT_PROMPT = "Describe this image in one short sentence."
ENGINE_MAX_MODEL_LEN = 4096


def image_data_url(data: bytes, uri: str = "") -> str:
    """Inline image for the OpenAI multimodal message format (no shared filesystem needed)."""
    mime = mimetypes.guess_type(uri.split("#")[-1])[0] or "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def caption_request(row: dict[str, Any], *, prompt: str, max_new_tokens: int) -> dict[str, Any]:
    """Preprocess: one image row -> chat messages + sampling params for the vLLM engine."""
    return {
        schema.ID: row[schema.ID],
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "image_url",
                        "image_url": {
                            "url": image_data_url(
                                row[schema.IMAGE_BYTES], str(row.get(schema.URI, ""))
                            )
                        },
                    },
                    {"type": "text", "text": prompt},
                ],
            }
        ],
        "sampling_params": {"temperature": 0.0, "max_tokens": max_new_tokens},
    }


def caption_result(row: dict[str, Any]) -> dict[str, Any]:
    """Postprocess: the engine's answer (or its per-row error) -> our caption columns."""
    error = str(row.get("__inference_error__") or "")
    text = "" if error else " ".join(str(row.get("generated_text", "")).split())
    return {
        schema.ID: row[schema.ID],
        schema.GENERATED_CAPTION: text,
        schema.ERROR: f"caption_error: {error}" if error else "",
    }


def processor_config_kwargs(cfg: CaptionerConfig) -> dict[str, Any]:
    """The vLLMEngineProcessorConfig arguments for a captioner config (pure; testable on CPU)."""
    if cfg.num_gpus < 1:
        raise ModelUnavailableError(
            "captioner.kind=vllm needs captioner.num_gpus >= 1 (one engine per GPU); "
            "use captioner.kind=blip on CPU"
        )
    return {
        "model_source": cfg.model,
        "batch_size": cfg.batch_size,
        "concurrency": cfg.num_actors,
        "engine_kwargs": {
            "max_model_len": ENGINE_MAX_MODEL_LEN,
            "tensor_parallel_size": int(cfg.num_gpus),
            "dtype": {"fp16": "float16", "bf16": "bfloat16"}.get(cfg.precision, "auto"),
        },
        "prepare_multimodal_stage": {"enabled": True},
        "should_continue_on_error": True,
    }
