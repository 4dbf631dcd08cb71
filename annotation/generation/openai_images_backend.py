"""Text-to-image generation through an OpenAI-compatible ``/images/generations`` endpoint.

Spec fields
-----------
``base_url`` (required), ``model`` (required), ``api_key_env``, ``max_concurrency`` (4),
``timeout_s`` (120), ``max_retries`` (3), ``backoff_s`` (1.0)
    As for the ``openai`` backend (see ``openai_backend``): the same URL checks, key policy
    (``EVALSITE_API_KEY_ENVS``), endpoint policy (``EVALSITE_BASE_URLS``), retries and
    scrubbing. Requests go to ``{base_url}/images/generations``.
``width``, ``height`` (1024)
    Sent as ``size: "WxH"``; multiples of 8 from 8 to 4096.
``extra_body``
    An object merged into every request body (``{"quality": "hd"}``, ``{"style": "vivid"}``,
    a server's ``negative_prompt``...); a key set to ``null`` removes that key.
    ``model``, ``prompt``, ``n`` and ``response_format`` cannot be overridden.
``price_per_image``
    Optional USD cost of one image, recorded per output.

Each request asks for one image (``n: 1``) as ``response_format: "b64_json"`` and carries
the request's ``seed`` (servers that honour it, such as many self-hosted ones, then
reproduce the image). The decoded bytes must be an image Pillow reads; PNG, JPEG and WebP
are stored as they came. ``latency_ms`` is the successful attempt's wall time.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

import httpx

from . import openai_backend
from .base import (
    REQUIRED,
    GenerationRequest,
    GenerationResult,
    GenerationSettings,
    SpecField,
    SpecPolicy,
    check_spec,
    spec_image_side,
    spec_int,
    spec_number,
    spec_str,
)
from .images import ImageError, normalise

_RESERVED = ("model", "prompt", "n", "response_format")  # what the backend itself sends
_check_extra_body = openai_backend.extra_body_check(_RESERVED)


SPEC_FIELDS: dict[str, SpecField] = {
    "base_url": SpecField(openai_backend._check_base_url, REQUIRED),
    "model": SpecField(spec_str, REQUIRED),
    "api_key_env": SpecField(openai_backend._check_env_name, None),
    "max_concurrency": SpecField(spec_int(1, 256), 4),
    "timeout_s": SpecField(spec_number(0.0, strict=True), 120.0),
    "max_retries": SpecField(spec_int(0, 20), 3),
    "backoff_s": SpecField(spec_number(0.0), 1.0),
    "width": SpecField(spec_image_side, 1024),
    "height": SpecField(spec_image_side, 1024),
    "extra_body": SpecField(_check_extra_body, {}),
    "price_per_image": SpecField(spec_number(0.0), None),
}


def validate_spec(spec: Mapping[str, Any], policy: SpecPolicy) -> dict[str, Any]:
    """Normalise an images-endpoint spec; the key and endpoint policies of the ``openai`` backend."""
    normalised = check_spec(spec, SPEC_FIELDS)
    openai_backend.check_endpoint_policy(normalised, policy)
    return normalised


def make_backend(spec: dict[str, Any], policy: SpecPolicy | None = None) -> OpenAIImagesBackend:
    return OpenAIImagesBackend(spec, policy)


class OpenAIImagesBackend(openai_backend.OpenAIBackend):
    """One ``/images/generations`` request per ``GenerationRequest``, concurrently, with the
    ``openai`` backend's client, retries and error scrubbing."""

    def __init__(self, spec: dict[str, Any], policy: SpecPolicy | None = None) -> None:
        super().__init__(spec, policy)
        self.url = f"{spec['base_url']}/images/generations"

    def request_body(self, request: GenerationRequest, settings: GenerationSettings) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.spec["model"],
            "prompt": request.prompt,
            "n": 1,
            "size": f"{self.spec['width']}x{self.spec['height']}",
            "response_format": "b64_json",
            "seed": request.seed,
        }
        for key, value in self.spec["extra_body"].items():
            if value is None:
                body.pop(key, None)
            else:
                body[key] = value
        return body

    def _parse(self, request: GenerationRequest, response: httpx.Response, latency_ms: float) -> GenerationResult:
        try:
            item = response.json()["data"][0]
            encoded = item["b64_json"]
            if not isinstance(encoded, str):
                raise TypeError(f"b64_json is {type(encoded).__name__}, not a string")
            data = base64.b64decode(encoded, validate=True)
        except (ValueError, KeyError, IndexError, TypeError, binascii.Error) as exc:
            return self._failure(request, f"malformed response ({type(exc).__name__}: {exc}): {response.text[:2000]}")
        try:
            data, _suffix, (width, height) = normalise(data)
        except ImageError as exc:
            return self._failure(request, f"the endpoint's image: {exc}")
        recorded: dict[str, Any] = {
            "backend": "openai_images",
            "model": self.spec["model"],
            "width": width,
            "height": height,
            "size_requested": f"{self.spec['width']}x{self.spec['height']}",
            "seed": request.seed,
        }
        recorded.update({key: value for key, value in self.spec["extra_body"].items() if value is not None})
        revised = item.get("revised_prompt") if isinstance(item, Mapping) else None
        if isinstance(revised, str) and revised:
            recorded["revised_prompt"] = revised[:2000]
        return GenerationResult(
            key=request.key, text="", error=None, latency_ms=latency_ms, cost=self.spec["price_per_image"],
            image=data, settings=recorded,
        )
