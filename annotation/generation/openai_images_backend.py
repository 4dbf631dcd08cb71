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
``response_format`` ("b64_json")
    ``"b64_json"`` (sent, as DALL-E and most self-hosted servers need to return the image
    itself rather than a URL), or ``null``: not sent, for OpenAI's gpt-image models, which
    refuse the parameter (400 "Unknown parameter") and return ``b64_json`` anyway.  Evalsite
    stores the image bytes and never fetches a URL: a reply with only ``url`` fails the output,
    saying to ask for ``b64_json``.
``send_seed`` (true)
    Send the output's ``seed`` (servers that honour it, such as many self-hosted ones, then
    reproduce the image).  ``false`` leaves it out, for endpoints that refuse unknown
    parameters: OpenAI does not document ``seed`` for this endpoint.  The output still records
    its seed; its settings then say ``"seed_sent": false``.
``batch_size`` (8)
    Outputs per generation task (what one worker claims at once), 1 to 256; at most
    ``max_concurrency`` requests of a task are in flight together.  Smaller batches show
    progress sooner and lose less to a stopped worker; a batch must finish within the task
    time limit (``EVALSITE_GENERATION_TIME_LIMIT``).
``extra_body``
    An object merged into every request body (``{"quality": "hd"}``, ``{"style": "vivid"}``,
    a server's ``negative_prompt``...); a key set to ``null`` removes that key.
    ``model``, ``prompt``, ``n`` and ``response_format`` cannot be overridden.
``price_per_image``
    Optional USD cost of one image, recorded per output.

Each request asks for one image (``n: 1``). The decoded bytes must be an image Pillow reads;
whatever its format, it is stored re-encoded as a PNG with no metadata (``images.normalise``).
``latency_ms`` is the successful attempt's wall time.
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
    BackendError,
    GenerationRequest,
    GenerationResult,
    GenerationSettings,
    SpecField,
    SpecPolicy,
    check_spec,
    spec_bool,
    spec_image_side,
    spec_int,
    spec_number,
    spec_str,
)
from .images import ImageError, normalise

_RESERVED = ("model", "prompt", "n", "response_format")  # what the backend itself sends
_check_extra_body = openai_backend.extra_body_check(_RESERVED)


def _check_response_format(name: str, value: Any) -> str:
    if value != "b64_json":
        why = (" (Evalsite stores the image itself and does not fetch URLs)" if value == "url" else "")
        raise BackendError(name, f'must be "b64_json" or null (not sent: for gpt-image models, which refuse it '
                           f"and return b64_json anyway), got {value!r}{why}")
    return value


_URL_ONLY = ("the endpoint returned an image URL, not the image (response_format was {asked}): set the "
             'spec\'s response_format to "b64_json"; Evalsite stores the image bytes and does not fetch URLs')


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
    "response_format": SpecField(_check_response_format, "b64_json"),
    "send_seed": SpecField(spec_bool, True),
    "batch_size": SpecField(spec_int(1, 256), 8),
    "extra_body": SpecField(_check_extra_body, {}),
    "price_per_image": SpecField(spec_number(0.0), None),
}


def validate_spec(spec: Mapping[str, Any], policy: SpecPolicy) -> dict[str, Any]:
    """Normalise an images-endpoint spec; the key and endpoint policies of the ``openai`` backend.

    ``response_format: null`` is kept as ``None`` (not sent), unlike other fields, where
    ``null`` takes the default; a spec without the key asks for ``b64_json``.
    """
    omit_format = isinstance(spec, Mapping) and "response_format" in spec and spec["response_format"] is None
    normalised = check_spec(spec, SPEC_FIELDS)
    if omit_format:
        normalised["response_format"] = None
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

    def request_body(self, request: GenerationRequest, settings: GenerationSettings | None) -> dict[str, Any]:
        """The JSON body sent for ``request`` (the study's decoding settings play no part)."""
        body: dict[str, Any] = {
            "model": self.spec["model"],
            "prompt": request.prompt,
            "n": 1,
            "size": f"{self.spec['width']}x{self.spec['height']}",
        }
        if self.spec["response_format"] is not None:
            body["response_format"] = self.spec["response_format"]
        if self.spec["send_seed"]:
            body["seed"] = request.seed
        for key, value in self.spec["extra_body"].items():
            if value is None:
                body.pop(key, None)
            else:
                body[key] = value
        return body

    def _parse(self, request: GenerationRequest, response: httpx.Response, latency_ms: float) -> GenerationResult:
        try:
            item = response.json()["data"][0]
            if isinstance(item, Mapping) and item.get("b64_json") is None and item.get("url"):
                return self._failure(request, _URL_ONLY.format(
                    asked="null (not sent)" if self.spec["response_format"] is None else '"b64_json"'))
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
        }
        body = self.request_body(request, None)  # what was sent (extra_body may drop or pin the seed)
        if "seed" in body:
            recorded["seed"] = body["seed"]
        else:
            recorded["seed_sent"] = False
        recorded.update({key: value for key, value in self.spec["extra_body"].items() if value is not None})
        revised = item.get("revised_prompt") if isinstance(item, Mapping) else None
        if isinstance(revised, str) and revised:
            recorded["revised_prompt"] = revised[:2000]
        return GenerationResult(
            key=request.key, text="", error=None, latency_ms=latency_ms, cost=self.spec["price_per_image"],
            image=data, settings=recorded,
        )
