"""Generation with a Hugging Face ``transformers`` model loaded in the worker process.

Spec fields
-----------
``model`` (required)
    An absolute path to a saved model directory inside one of the operator's model roots
    (``SpecPolicy.model_roots``, setting ``EVALSITE_MODEL_ROOTS``; symlinks and ``..`` are
    resolved before the check), or a hub id ``org/name`` already in the workers' cache
    unless the operator turned hub ids off (``EVALSITE_ALLOW_HUB_IDS=0``). With
    ``HF_HUB_OFFLINE=1`` (or ``TRANSFORMERS_OFFLINE=1``) nothing is downloaded.
``tokenizer``
    Where to load the tokenizer from, under the same rules; defaults to ``model``.
``batch_size`` (8)
    Prompts per ``generate`` call.
``dtype`` ("float32")
    ``"float32"``, ``"bfloat16"`` or ``"float16"``.
``device`` ("cpu")
    ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or ``"auto"`` (CUDA, then MPS, then CPU).
``chat_template``
    ``true``: format prompts with the tokenizer's chat template (an error if it has none);
    ``false``: use the raw prompt; unset: use the template when the tokenizer has one.
``trust_remote_code`` (false)
    Passed to ``from_pretrained``: ``true`` runs Python shipped with the model on the
    worker, so it is refused unless the operator allows it (``EVALSITE_TRUST_REMOTE_CODE=1``),
    on the web when the candidate is added and again on the worker before loading.
``price_per_1k_input``, ``price_per_1k_output``
    Optional USD prices per 1000 tokens (e.g. the cost of the GPU time, amortised).

Causal and sequence-to-sequence models are told apart by ``config.is_encoder_decoder``.
torch and transformers are imported only inside the functions that use them.

Decoding and seeds
------------------
``temperature == 0`` is greedy decoding. For ``temperature > 0`` each request gets its own
``torch.Generator`` seeded with ``request.seed``, and a logits processor samples each row
of the batch with its own generator (after temperature and top-p), while ``generate``
itself runs greedily over the one token left. So an output's text depends on its prompt,
seed and settings, not on which other prompts shared its batch, and the same request
always gives the same text on the same hardware and library versions. The one caveat,
for greedy and sampled decoding alike, is floating point: a padded row's logits can differ
from the unpadded ones in the last bits, which can flip a near-tie.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .base import (
    PRICE_FIELDS,
    REQUIRED,
    BackendError,
    GenerationRequest,
    GenerationResult,
    GenerationSettings,
    SpecField,
    SpecPolicy,
    check_model_dir,
    check_prices,
    check_spec,
    compute_cost,
    model_location,
    spec_bool,
    spec_choice,
    spec_int,
    spec_str,
)

DTYPES = ("float32", "bfloat16", "float16")
_DEVICE = re.compile(r"cpu|cuda(:\d+)?|mps|auto")


def _check_device(name: str, value: Any) -> str:
    if not isinstance(value, str) or not _DEVICE.fullmatch(value):
        raise BackendError(name, f"must be cpu, cuda, cuda:N, mps or auto; got {value!r}")
    return value


SPEC_FIELDS: dict[str, SpecField] = {
    "model": SpecField(spec_str, REQUIRED),
    "tokenizer": SpecField(spec_str, None),
    "batch_size": SpecField(spec_int(1, 1024), 8),
    "dtype": SpecField(spec_choice(*DTYPES), "float32"),
    "device": SpecField(_check_device, "cpu"),
    "chat_template": SpecField(spec_bool, None),
    "trust_remote_code": SpecField(spec_bool, False),
    **PRICE_FIELDS,
}


_REMOTE_CODE_REFUSED = (
    "is off on this site: it runs Python code shipped with the model on the shared workers; "
    "the operator can allow it (setting EVALSITE_TRUST_REMOTE_CODE=1)"
)


def validate_spec(spec: Mapping[str, Any], policy: SpecPolicy) -> dict[str, Any]:
    """Normalise a transformers spec under the operator's policy; ``BackendError`` names the field.

    Checks where the model is (a hub id, or a path confined to a model root), not whether
    it exists: ``check_files`` does that on a machine that can see it.
    """
    normalised = check_spec(spec, SPEC_FIELDS)
    check_prices(normalised)
    if normalised["trust_remote_code"] and not policy.trust_remote_code:
        raise BackendError("trust_remote_code", _REMOTE_CODE_REFUSED)
    model_location("model", normalised["model"], policy)
    if normalised["tokenizer"] is not None:
        model_location("tokenizer", normalised["tokenizer"], policy)
    return normalised


def check_files(spec: Mapping[str, Any], policy: SpecPolicy, *, on_worker: bool = False) -> str:
    """``"ok"`` when the model (and tokenizer) were found here, ``"pending"`` when a worker
    must look (see ``base.check_files``); ``BackendError`` naming the field when missing.

    A local path is looked at wherever its model root exists; a hub id only on a worker
    (in its Hugging Face cache, when offline).
    """
    seen_all = True
    for field, marker in (("model", "config.json"), ("tokenizer", None)):
        value = spec[field]
        if value is None:
            continue
        if model_location(field, value, policy).hub_id is not None:
            if on_worker:
                _check_hub_cache(field, value)
            else:
                seen_all = False
        elif not check_model_dir(field, value, policy, marker=marker, on_worker=on_worker):
            seen_all = False
    return "ok" if seen_all else "pending"


def _check_hub_cache(field: str, hub_id: str) -> None:
    """Offline, a hub id loads only from the local cache: look for its config there."""
    if not _offline():
        return
    _refuse_relative_dir(field, hub_id)
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(hub_id, "config.json" if field == "model" else "tokenizer_config.json")
    if not isinstance(found, str):
        raise BackendError(
            field, f"{hub_id} is not in this worker's Hugging Face cache, and the worker is offline (HF_HUB_OFFLINE)"
        )


def make_backend(spec: dict[str, Any], policy: SpecPolicy | None = None) -> TransformersBackend:
    return TransformersBackend(spec, policy or SpecPolicy())


@dataclass
class LoadedModel:
    tokenizer: Any
    model: Any
    is_encoder_decoder: bool
    device: str
    pad_token_id: int
    eos_token_ids: frozenset[int]
    context_length: int | None


# One loaded model per process: a Celery worker that runs task after task for the same
# candidate loads it once; a different candidate replaces it (memory stays bounded).
_cache_lock = threading.Lock()
_cache: tuple[tuple[Any, ...], LoadedModel] | None = None


def clear_model_cache() -> None:
    """Drop the cached model (tests, or a worker that wants its memory back)."""
    global _cache
    with _cache_lock:
        _cache = None


def load_model(spec: Mapping[str, Any], policy: SpecPolicy | None = None) -> LoadedModel:
    """Load (or reuse) the tokenizer and model for a validated spec, under this worker's policy.

    The policy is applied here again, whatever the web accepted: remote code only if this
    worker allows it, and paths resolved and confined to this worker's model roots.
    Raises ``BackendError`` naming ``model``, ``tokenizer``, ``device``, ``chat_template``
    or ``trust_remote_code``.
    """
    global _cache
    policy = policy or SpecPolicy()
    if spec["trust_remote_code"] and not policy.trust_remote_code:
        raise BackendError("trust_remote_code", _REMOTE_CODE_REFUSED)
    model_source = _source("model", spec["model"], policy)
    tokenizer_field = "tokenizer" if spec["tokenizer"] else "model"
    tokenizer_source = _source(tokenizer_field, spec["tokenizer"] or spec["model"], policy)
    device = _resolve_device(spec["device"])
    key = (model_source, tokenizer_source, spec["dtype"], device, spec["trust_remote_code"])
    with _cache_lock:
        if _cache is not None and _cache[0] == key:
            return _cache[1]
        if _cache is not None:
            _cache = None
            _release_memory(device)
        loaded = _load(spec, device, model_source, tokenizer_source, tokenizer_field)
        _cache = (key, loaded)
        return loaded


def _offline() -> bool:
    return any(
        os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _refuse_relative_dir(field: str, hub_id: str) -> None:
    # from_pretrained("org/name") would load a directory of that name relative to the
    # worker's working directory before looking in the cache: never outside the roots.
    if os.path.exists(hub_id):
        raise BackendError(
            field, f"{hub_id} is a hub id but also a directory relative to the worker's working directory; "
            "give the absolute path inside a model root instead"
        )


def _source(field: str, name: str, policy: SpecPolicy) -> str:
    """What to pass to ``from_pretrained``: the hub id, or the resolved directory."""
    location = model_location(field, name, policy)
    if location.hub_id is not None:
        _refuse_relative_dir(field, location.hub_id)
        return location.hub_id
    if not os.path.isdir(location.path):
        raise BackendError(field, f"no such model directory: {name}")
    return location.path  # the real path checked above, so a symlink swapped later is not followed


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BackendError("device", f"{device} requested but CUDA is not available on this worker")
    if device == "mps" and not torch.backends.mps.is_available():
        raise BackendError("device", "mps requested but MPS is not available on this worker")
    return device


def _release_memory(device: str) -> None:
    import gc

    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def _load(
    spec: Mapping[str, Any], device: str, model_source: str, tokenizer_source: str, tokenizer_field: str
) -> LoadedModel:
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSeq2SeqLM,
        AutoTokenizer,
    )

    common = {"local_files_only": _offline(), "trust_remote_code": spec["trust_remote_code"]}
    hint = " (offline: only models already on disk or in the cache)" if _offline() else ""

    try:
        config = AutoConfig.from_pretrained(model_source, **common)
    except (OSError, ValueError, KeyError) as exc:
        raise BackendError("model", f"cannot load a model config from {model_source!r}{hint}: {exc}") from None
    is_encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
    auto = AutoModelForSeq2SeqLM if is_encoder_decoder else AutoModelForCausalLM

    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source, **common)
    except (OSError, ValueError, KeyError) as exc:
        raise BackendError(tokenizer_field, f"cannot load a tokenizer from {tokenizer_source!r}{hint}: {exc}") from None
    try:
        model = auto.from_pretrained(
            model_source, config=config, dtype=getattr(torch, spec["dtype"]), **common
        )
    except (OSError, ValueError, KeyError) as exc:
        raise BackendError("model", f"cannot load model weights from {model_source!r}{hint}: {exc}") from None
    model.to(device)
    model.eval()

    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    eos_ids = frozenset([eos] if isinstance(eos, int) else (eos or []))
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = model.generation_config.pad_token_id
    if pad is None and eos_ids:
        # Causal models often ship without a pad token; eos is the usual stand-in, and the
        # attention mask keeps the model from reading it.
        pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else min(eos_ids)
    if pad is None:
        raise BackendError(tokenizer_field, "the tokenizer has neither a pad nor an eos token")
    context = None if is_encoder_decoder else getattr(config, "max_position_embeddings", None)
    return LoadedModel(
        tokenizer=tokenizer,
        model=model,
        is_encoder_decoder=is_encoder_decoder,
        device=device,
        pad_token_id=int(pad),
        eos_token_ids=eos_ids,
        context_length=context if isinstance(context, int) else None,
    )


class TransformersBackend:
    """Generates in batches of ``batch_size`` with the cached model of this process.

    Per result: ``latency_ms`` is the wall time of the whole batch the request was in
    (tokenization, ``generate`` and decoding), since a batch's outputs are produced
    together; ``prompt_tokens`` counts the request's input tokens (no padding), after the
    chat template if one is used; ``completion_tokens`` counts the generated tokens up to
    and including the first end-of-sequence token, excluding padding; the text is the
    decoded new tokens with special tokens skipped. A prompt that does not fit the model's
    context with ``max_new_tokens`` is an error result, not truncated.
    """

    def __init__(self, spec: dict[str, Any], policy: SpecPolicy | None = None) -> None:
        self.spec = spec
        self.policy = policy or SpecPolicy()

    def generate(
        self, requests: list[GenerationRequest], settings: GenerationSettings
    ) -> list[GenerationResult]:
        if not requests:
            return []
        loaded = load_model(self.spec, self.policy)
        use_chat = self._use_chat_template(loaded)
        results: list[GenerationResult | None] = [None] * len(requests)
        ready: list[tuple[int, list[int]]] = []
        for index, request in enumerate(requests):
            try:
                ids = self._encode(loaded, request.prompt, settings, use_chat)
            except Exception as exc:  # a template or tokenizer failure on one prompt
                results[index] = GenerationResult.failure(request.key, f"could not tokenize the prompt: {exc}")
                continue
            problem = self._check_length(loaded, ids, settings)
            if problem:
                results[index] = GenerationResult.failure(request.key, problem)
            else:
                ready.append((index, ids))

        size = self.spec["batch_size"]
        for start in range(0, len(ready), size):
            batch = ready[start : start + size]
            batch_requests = [requests[index] for index, _ in batch]
            try:
                outputs = self._generate_batch(loaded, batch_requests, [ids for _, ids in batch], settings)
            except Exception as exc:  # e.g. out of memory: these outputs fail, the rest go on
                outputs = [
                    GenerationResult.failure(r.key, f"generation failed: {type(exc).__name__}: {exc}")
                    for r in batch_requests
                ]
            for (index, _), result in zip(batch, outputs):
                results[index] = result
        return [result for result in results if result is not None]

    def _use_chat_template(self, loaded: LoadedModel) -> bool:
        has_template = bool(getattr(loaded.tokenizer, "chat_template", None))
        wanted = self.spec["chat_template"]
        if wanted and not has_template:
            raise BackendError("chat_template", "is true but the tokenizer has no chat template")
        return has_template if wanted is None else wanted

    def _encode(
        self, loaded: LoadedModel, prompt: str, settings: GenerationSettings, use_chat: bool
    ) -> list[int]:
        tokenizer = loaded.tokenizer
        if use_chat:
            messages = []
            if settings.system_prompt:
                messages.append({"role": "system", "content": settings.system_prompt})
            messages.append({"role": "user", "content": prompt})
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            # The template already holds whatever special tokens the model expects.
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            # Without a template a system prompt can only be prepended as plain text.
            text = f"{settings.system_prompt}\n\n{prompt}" if settings.system_prompt else prompt
            ids = tokenizer(text)["input_ids"]
        if not ids and tokenizer.bos_token_id is not None:
            ids = [tokenizer.bos_token_id]
        return list(ids)

    def _check_length(self, loaded: LoadedModel, ids: list[int], settings: GenerationSettings) -> str | None:
        if not ids:
            return "the prompt is empty after tokenization and the tokenizer has no bos token"
        if loaded.context_length is not None and len(ids) + settings.max_new_tokens > loaded.context_length:
            return (
                f"the prompt is {len(ids)} tokens; with max_new_tokens={settings.max_new_tokens} "
                f"it exceeds the model's context of {loaded.context_length} tokens"
            )
        return None

    def _generate_batch(
        self,
        loaded: LoadedModel,
        requests: list[GenerationRequest],
        batch_ids: list[list[int]],
        settings: GenerationSettings,
    ) -> list[GenerationResult]:
        import torch
        from transformers import LogitsProcessorList

        started = time.perf_counter()
        width = max(len(ids) for ids in batch_ids)
        input_ids = torch.full((len(batch_ids), width), loaded.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch_ids), width), dtype=torch.long)
        for row, ids in enumerate(batch_ids):
            # Causal models continue from the last position, so their padding goes on the
            # left; an encoder reads the whole input, so right padding is the convention.
            span = slice(width - len(ids), width) if not loaded.is_encoder_decoder else slice(0, len(ids))
            input_ids[row, span] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, span] = 1

        kwargs: dict[str, Any] = {
            "max_new_tokens": settings.max_new_tokens,
            "do_sample": False,
            "num_beams": 1,
            "pad_token_id": loaded.pad_token_id,
        }
        if not settings.greedy:
            kwargs["logits_processor"] = LogitsProcessorList(
                [_make_seeded_sampler([r.seed for r in requests], settings, loaded.device)]
            )
        with torch.inference_mode():
            output = loaded.model.generate(
                input_ids=input_ids.to(loaded.device),
                attention_mask=attention_mask.to(loaded.device),
                **kwargs,
            )
        # generate returns prompt + new tokens for causal models, and the decoder sequence
        # (starting with the decoder start token) for encoder-decoder models.
        new_tokens = output[:, 1:] if loaded.is_encoder_decoder else output[:, width:]
        decoded = []
        for row in new_tokens.tolist():
            end = next((i for i, token in enumerate(row) if token in loaded.eos_token_ids), None)
            kept = row if end is None else row[:end]
            count = len(row) if end is None else end + 1
            decoded.append((loaded.tokenizer.decode(kept, skip_special_tokens=True), count))
        latency_ms = (time.perf_counter() - started) * 1000

        results = []
        for request, ids, (text, completion_tokens) in zip(requests, batch_ids, decoded):
            results.append(
                GenerationResult(
                    key=request.key,
                    text=text,
                    error=None,
                    latency_ms=latency_ms,
                    prompt_tokens=len(ids),
                    completion_tokens=completion_tokens,
                    cost=compute_cost(self.spec, len(ids), completion_tokens),
                )
            )
        return results


def _make_seeded_sampler(seeds: Sequence[int], settings: GenerationSettings, device: str):
    """A logits processor that samples each row with its own seeded generator.

    It returns scores that are ``-inf`` except at the sampled token, so the greedy step of
    ``generate`` picks exactly that token. Temperature and top-p (nucleus) filtering are
    applied here, with the OpenAI semantics: keep the most likely tokens whose cumulative
    probability reaches ``top_p`` (always at least one). No top-k is applied.
    """
    import torch
    from transformers import LogitsProcessor

    class SeededSampler(LogitsProcessor):
        def __init__(self) -> None:
            self.generators = [torch.Generator(device=device).manual_seed(seed) for seed in seeds]

        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
            probs = torch.softmax(scores.float() / settings.temperature, dim=-1)
            if settings.top_p < 1.0:
                sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
                before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
                sorted_probs = sorted_probs.masked_fill(before >= settings.top_p, 0.0)
                probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
            chosen = torch.stack(
                [torch.multinomial(probs[row], 1, generator=gen) for row, gen in enumerate(self.generators)]
            )
            out = torch.full_like(scores, float("-inf"))
            return out.scatter(-1, chosen, 0.0)

    return SeededSampler()
