"""vLLM engine through Ray Serve LLM (`ray.serve.llm`): the GPU path of the same OpenAI API.

`ray.serve.llm` refuses to import without vLLM, so it is imported only inside `build_vllm_app`;
`vllm_llm_config_dict` is the pure translation of our args into its `LLMConfig` fields. A VLM is
served from the same config: vLLM's OpenAI server takes `image_url` parts (data: URLs) itself;
we only raise its per-request image limit, which older vLLM versions set to one image.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from visdiff.config import TINY, TINY_VLM
from visdiff.errors import ConfigError, ModelUnavailableError
from visdiff.serving.args import LLMAppArgs, scaling_options

if TYPE_CHECKING:
    from ray.serve import Application

_VLLM_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def vllm_llm_config_dict(args: LLMAppArgs) -> dict[str, Any]:
    """`ray.serve.llm.LLMConfig` fields for our args.

    A replica shards the model over `num_gpus` GPUs (tensor parallelism), one engine worker per
    GPU; the replica's `num_cpus` are split evenly over those workers.
    """
    if args.num_gpus < 1:
        raise ConfigError(
            f"engine vllm needs at least one whole GPU per replica, got num_gpus={args.num_gpus}; "
            "set llm.num_gpus=1 (or more for tensor parallelism) or use engine transformers"
        )
    if args.num_gpus != int(args.num_gpus):
        raise ConfigError(
            f"engine vllm shards a model over whole GPUs; num_gpus={args.num_gpus} is fractional"
        )
    if args.api_key_sha256 is not None:
        raise ConfigError(
            "engine vllm (Ray Serve LLM's OpenAI app) does not check an API key: keep "
            "llm.http_host on loopback (127.0.0.1) without llm.serve_api_key_env, or use engine "
            "transformers"
        )
    if args.model in (TINY, TINY_VLM):
        raise ConfigError(
            f"engine vllm loads real weights; llm.model={args.model} (a random model) runs only "
            "on engine transformers: set llm.engine=transformers or a hub id / local folder"
        )
    tensor_parallel = int(args.num_gpus)
    engine_kwargs: dict[str, Any] = {
        "dtype": _VLLM_DTYPES[args.precision],
        "tensor_parallel_size": tensor_parallel,
    }
    from visdiff.models.vlm import is_vlm

    if is_vlm(args.model):  # vLLM refuses this setting for a text-only model
        engine_kwargs["limit_mm_per_prompt"] = {"image": args.max_images_per_prompt}
    return {
        "model_loading_config": {
            "model_id": args.served_model_name,
            "model_source": args.model,
        },
        "engine_kwargs": engine_kwargs,
        "placement_group_config": {
            "bundle_per_worker": {"CPU": args.num_cpus / tensor_parallel, "GPU": 1},
        },
        "deployment_config": scaling_options(args),
    }


def build_vllm_app(args: LLMAppArgs) -> Application:
    """OpenAI-compatible Serve app (router + vLLM servers) built by `ray.serve.llm`."""
    config = vllm_llm_config_dict(args)
    try:
        from ray.serve.llm import LLMConfig, build_openai_app
    except ImportError as exc:
        raise ModelUnavailableError(
            "engine vllm needs the gpu extra: pip install 'visdiff[gpu]' (installs ray[llm] with "
            "vLLM; Linux with a CUDA GPU), or set llm.engine=transformers "
            f"(import failed: {exc})"
        ) from None
    return build_openai_app({"llm_configs": [LLMConfig(**config)]})
