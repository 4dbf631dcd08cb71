"""Text-to-image generation with a ``diffusers`` pipeline loaded in the worker process.

Spec fields
-----------
``model`` (required)
    A directory ``DiffusionPipeline.from_pretrained`` loads (one with ``model_index.json``:
    a Stable Diffusion 1.5 or SDXL checkout, ...), as an absolute path inside one of the
    operator's model roots (``EVALSITE_MODEL_ROOTS``), or a hub id already in the workers'
    cache unless the operator turned hub ids off. Nothing is downloaded with ``HF_HUB_OFFLINE=1``.
``steps`` (30)
    Denoising steps (``num_inference_steps``), 1 to 1000.
``guidance_scale`` (7.5)
    Classifier-free guidance scale, 0 to 50 (at most 1 turns guidance off).
``scheduler``
    ``ddim``, ``pndm``, ``euler``, ``euler_a``, ``dpm`` (DPM-Solver++ multistep),
    ``heun`` or ``unipc``, built from the pipeline's own scheduler config; unset keeps the
    scheduler the pipeline was saved with.
``width``, ``height``
    Image size in pixels, multiples of 8 from 8 to 4096; unset: the pipeline's native size.
``negative_prompt`` ("")
    Sent with every prompt (what the image should not show).
``dtype`` ("auto")
    ``auto`` (float16 on CUDA, float32 on CPU), ``float32``, ``float16`` or ``bfloat16``.
    Half precision runs only on CUDA: on a CPU worker the pipeline runs in float32 and each
    output's settings record the dtype asked for and the one used.
``batch_size`` (4)
    Images per pipeline call.
``price_per_image``
    Optional USD cost of one image (e.g. GPU time, amortised), recorded per output.

The device is the worker's (``SpecPolicy.diffusers_device``, setting
``EVALSITE_DIFFUSERS_DEVICE``: ``auto`` is CUDA when there is one, else the CPU), not the
spec's. torch and diffusers are imported only inside the functions that use them.

Seeds and reproducibility
-------------------------
``request.seed`` is the output's recorded seed (``services._output_seed``: one per prompt and
sample, the same for every candidate, reused by retries and reruns). Each image gets its own
``torch.Generator(device).manual_seed(request.seed)`` (the
pipeline draws that sample's starting latents, and an ancestral scheduler's noise, from it),
so an image depends on its prompt, seed and settings, not on the other prompts in its batch;
the same request on the same hardware, library versions and batch gives the same pixels and
so the same PNG bytes. ``latency_ms`` is the batch's wall time divided by its size.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .base import (
    REQUIRED,
    BackendError,
    GenerationRequest,
    GenerationResult,
    GenerationSettings,
    SpecField,
    SpecPolicy,
    check_model_dir,
    check_spec,
    model_location,
    spec_choice,
    spec_image_side,
    spec_int,
    spec_number,
    spec_str,
)

DTYPES = ("auto", "float32", "float16", "bfloat16")
# name -> diffusers class (and extra config), built from the pipeline's own scheduler config
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpm": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "heun": ("HeunDiscreteScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
}
_DEVICE = re.compile(r"cpu|cuda(:\d+)?|auto")


def _check_text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise BackendError(name, f"must be a string, got {type(value).__name__}")
    if len(value) > 2000:
        raise BackendError(name, f"must be at most 2000 characters, got {len(value)}")
    return value


def _check_guidance(name: str, value: Any) -> float:
    value = spec_number(0.0)(name, value)
    if value > 50:
        raise BackendError(name, f"must be between 0 and 50, got {value:g}")
    return value


SPEC_FIELDS: dict[str, SpecField] = {
    "model": SpecField(spec_str, REQUIRED),
    "steps": SpecField(spec_int(1, 1000), 30),
    "guidance_scale": SpecField(_check_guidance, 7.5),
    "scheduler": SpecField(spec_choice(*SCHEDULERS), None),
    "width": SpecField(spec_image_side, None),
    "height": SpecField(spec_image_side, None),
    "negative_prompt": SpecField(_check_text, ""),
    "dtype": SpecField(spec_choice(*DTYPES), "auto"),
    "batch_size": SpecField(spec_int(1, 64), 4),
    "price_per_image": SpecField(spec_number(0.0), None),
}


def validate_spec(spec: Mapping[str, Any], policy: SpecPolicy) -> dict[str, Any]:
    """Normalise a diffusers spec under the operator's policy; ``BackendError`` names the field."""
    normalised = check_spec(spec, SPEC_FIELDS)
    model_location("model", normalised["model"], policy)
    return normalised


def check_files(spec: Mapping[str, Any], policy: SpecPolicy, *, on_worker: bool = False) -> str:
    """``"ok"`` when the pipeline directory (with its ``model_index.json``) was found here,
    ``"pending"`` when a worker must look; ``BackendError`` naming ``model`` when missing."""
    location = model_location("model", spec["model"], policy)
    if location.hub_id is not None:
        if not on_worker:
            return "pending"
        _check_hub_cache(spec["model"])
        return "ok"
    return "ok" if check_model_dir("model", spec["model"], policy, marker="model_index.json",
                                   on_worker=on_worker) else "pending"


def _offline() -> bool:
    return any(
        os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
        for name in ("HF_HUB_OFFLINE", "DIFFUSERS_OFFLINE")
    )


def _check_hub_cache(hub_id: str) -> None:
    if os.path.exists(hub_id):
        raise BackendError("model", f"{hub_id} is a hub id but also a directory relative to the worker's "
                           "working directory; give the absolute path inside a model root instead")
    if not _offline():
        return
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(hub_id, "model_index.json"), str):
        raise BackendError("model", f"{hub_id} is not in this worker's Hugging Face cache, and the worker "
                           "is offline (HF_HUB_OFFLINE)")


def make_backend(spec: dict[str, Any], policy: SpecPolicy | None = None) -> DiffusersBackend:
    return DiffusersBackend(spec, policy or SpecPolicy())


@dataclass
class LoadedPipeline:
    pipeline: Any
    device: str
    dtype: str  # the dtype used, after a CPU fallback
    scheduler: Any  # the one the pipeline was saved with: a spec's choice never sticks to the cache


# One pipeline per process, like the transformers backend: a worker running batch after
# batch of one candidate loads it once; another candidate replaces it.
_cache_lock = threading.Lock()
_cache: tuple[tuple[Any, ...], LoadedPipeline] | None = None


def clear_pipeline_cache() -> None:
    global _cache
    with _cache_lock:
        _cache = None


def resolve_device(device: str) -> str:
    """The torch device for the operator's setting; ``BackendError`` if it cannot be used here."""
    import torch

    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise BackendError("device", f"EVALSITE_DIFFUSERS_DEVICE must be auto, cpu, cuda or cuda:N; got {device!r}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BackendError("device", f"EVALSITE_DIFFUSERS_DEVICE={device} but CUDA is not available on this worker")
    return device


def resolve_dtype(asked: str, device: str) -> tuple[str, str]:
    """The dtype to run in on ``device`` and a note when it is not the one asked for."""
    if asked == "auto":
        return ("float16" if device.startswith("cuda") else "float32"), ""
    if asked in ("float16", "bfloat16") and not device.startswith("cuda"):
        return "float32", f"{asked} asked for, but this worker runs pipelines on {device}: ran in float32"
    return asked, ""


def load_pipeline(spec: Mapping[str, Any], policy: SpecPolicy) -> LoadedPipeline:
    """Load (or reuse) the pipeline of a validated spec, under this worker's policy."""
    global _cache
    location = model_location("model", spec["model"], policy)
    if location.hub_id is not None:
        _check_hub_cache(location.hub_id)
        source = location.hub_id
    elif not os.path.isdir(location.path):
        raise BackendError("model", f"no such pipeline directory: {spec['model']}")
    else:
        source = location.path
    device = resolve_device(policy.diffusers_device)
    dtype, _ = resolve_dtype(spec["dtype"], device)
    key = (source, device, dtype)
    with _cache_lock:
        if _cache is not None and _cache[0] == key:
            return _cache[1]
        if _cache is not None:
            _cache = None
            import gc

            gc.collect()
            _empty_cuda_cache()
        pipeline = _load(source, device, dtype)
        loaded = LoadedPipeline(pipeline, device, dtype, pipeline.scheduler)
        _cache = (key, loaded)
        return loaded


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _load(source: str, device: str, dtype: str):
    import torch
    from diffusers import DiffusionPipeline

    hint = " (offline: only pipelines already on disk or in the cache)" if _offline() else ""
    try:
        pipeline = DiffusionPipeline.from_pretrained(
            source, dtype=getattr(torch, dtype), local_files_only=_offline(), trust_remote_code=False
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BackendError("model", f"cannot load a diffusers pipeline from {source!r}{hint}: {exc}") from None
    pipeline.to(device)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _scheduler(saved, name: str | None):
    """A fresh scheduler: the saved one's class, or the named one, from the saved config."""
    import diffusers

    if name is None:
        return type(saved).from_config(saved.config)
    class_name, extra = SCHEDULERS[name]
    return getattr(diffusers, class_name).from_config(saved.config, **extra)


class DiffusersBackend:
    """Generates images in batches of ``batch_size`` with the cached pipeline of this process.

    Each result has ``text=""``, ``image`` (PNG bytes), ``latency_ms`` (the batch's wall
    time over its size), ``cost`` (``price_per_image``) and ``settings``: steps, guidance
    scale, scheduler, width, height, negative prompt, seed, device and dtype of that sample.
    A batch that fails (out of memory, a pipeline that refuses an argument) fails its own
    outputs; the other batches go on.
    """

    def __init__(self, spec: dict[str, Any], policy: SpecPolicy | None = None) -> None:
        self.spec = spec
        self.policy = policy or SpecPolicy()

    def generate(
        self, requests: list[GenerationRequest], settings: GenerationSettings
    ) -> list[GenerationResult]:
        if not requests:
            return []
        loaded = load_pipeline(self.spec, self.policy)
        scheduler = _scheduler(loaded.scheduler, self.spec["scheduler"])
        results: list[GenerationResult] = []
        size = self.spec["batch_size"]
        for start in range(0, len(requests), size):
            batch = requests[start : start + size]
            try:
                results += self._batch(loaded, scheduler, batch)
            except Exception as exc:  # e.g. out of memory: these outputs fail, the rest go on
                results += [
                    GenerationResult.failure(r.key, f"generation failed: {type(exc).__name__}: {exc}")
                    for r in batch
                ]
        return results

    def _batch(self, loaded: LoadedPipeline, scheduler, batch: list[GenerationRequest]) -> list[GenerationResult]:
        import torch

        from .images import png_bytes

        pipeline = loaded.pipeline
        pipeline.scheduler = scheduler
        scale = getattr(pipeline, "vae_scale_factor", 8)
        native = getattr(getattr(pipeline, "unet", None), "config", None)
        native_side = native.sample_size * scale if native is not None and isinstance(native.sample_size, int) else None
        width = self.spec["width"] or native_side
        height = self.spec["height"] or native_side
        negative = self.spec["negative_prompt"]
        kwargs: dict[str, Any] = {
            "prompt": [r.prompt for r in batch],
            "num_inference_steps": self.spec["steps"],
            "guidance_scale": self.spec["guidance_scale"],
            "generator": [torch.Generator(device=loaded.device).manual_seed(r.seed) for r in batch],
            "output_type": "pil",
        }
        if negative:
            kwargs["negative_prompt"] = [negative] * len(batch)
        if width is not None:
            kwargs["width"], kwargs["height"] = width, height
        started = time.perf_counter()
        with torch.inference_mode():
            output = pipeline(**kwargs)
        images = list(output.images)
        encoded = [png_bytes(image) for image in images]
        per_image_ms = (time.perf_counter() - started) * 1000 / len(batch)
        flagged = getattr(output, "nsfw_content_detected", None) or [None] * len(batch)
        scheduler_name = self.spec["scheduler"] or type(scheduler).__name__
        _dtype, note = resolve_dtype(self.spec["dtype"], loaded.device)
        results = []
        for request, image, data, nsfw in zip(batch, images, encoded, flagged):
            recorded = {
                "backend": "diffusers",
                "steps": self.spec["steps"],
                "guidance_scale": self.spec["guidance_scale"],
                "scheduler": scheduler_name,
                "width": image.width,
                "height": image.height,
                "negative_prompt": negative,
                "seed": request.seed,
                "device": loaded.device,
                "dtype": loaded.dtype,
            }
            if note:  # half precision asked for on a CPU worker
                recorded["dtype_requested"] = self.spec["dtype"]
                recorded["note"] = note
            if nsfw:
                recorded["nsfw_flagged"] = True  # the pipeline's own safety checker blanked it
            results.append(GenerationResult(
                key=request.key, text="", error=None, latency_ms=per_image_ms, cost=self.spec["price_per_image"],
                image=data, settings=recorded,
            ))
        return results
