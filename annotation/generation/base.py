"""The backend-neutral side of generation: settings, requests, results, spec checks.

Nothing here imports Django, torch or transformers, so the web process can validate a
candidate's spec and the Celery worker can pick a backend with the same code. A backend
module is imported only when ``get_backend`` or ``validate_spec`` asks for it, and backend
modules themselves import their heavy libraries inside the functions that need them.

What a spec may do on the shared workers is the operator's choice, passed in as a
``SpecPolicy`` (the Django side builds it from settings); the defaults are the safe ones.
Every error text that came from an endpoint or a backend goes through ``Scrubber`` before
it is stored, shown or logged.
"""

from __future__ import annotations

import base64
import importlib
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol
from urllib.parse import quote, quote_plus, urlsplit


class BackendError(Exception):
    """A candidate's configuration cannot work: a bad spec, a missing model or variable.

    The message starts with the name of the offending field (``"model: ..."``) so a form can
    attach it to that field. Failures of a single request are not raised; they come back as a
    ``GenerationResult`` with ``error`` set.
    """

    def __init__(self, field: str, message: str | None = None) -> None:
        if message is None:  # BackendError("whole message") is allowed too
            field, message = "", field
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings shared by every output of one generation run.

    ``temperature == 0`` means greedy decoding. ``seed`` is the run's base seed: callers
    derive each request's seed from it (for example ``seed + sample_index``) and backends use
    only ``GenerationRequest.seed``, so an output can be regenerated on its own.

    ``seed`` is at most :attr:`MAX_SEED` so that ``seed + sample_index`` (a sample index is
    below 2**15) fits every consumer: numpy's and torch's seeds (below 2**32), an
    OpenAI-compatible server's 64-bit integer and ``Output.seed`` (a BigIntegerField).
    ``max_new_tokens`` is at most :attr:`MAX_NEW_TOKENS`, which every backend accepts.
    """

    # Not annotated, so not dataclass fields.
    MAX_SEED = 2**31 - 1
    MAX_NEW_TOKENS = 32768

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    system_prompt: str = ""

    def __post_init__(self) -> None:
        _check_int("max_new_tokens", self.max_new_tokens, minimum=1)
        if self.max_new_tokens > self.MAX_NEW_TOKENS:
            raise ValueError(f"max_new_tokens: must be at most {self.MAX_NEW_TOKENS}, got {self.max_new_tokens}")
        _check_number("temperature", self.temperature, minimum=0.0)
        _check_number("top_p", self.top_p, minimum=0.0)
        # Frozen: normalise ints given for float fields so to_dict() round-trips exactly.
        object.__setattr__(self, "temperature", float(self.temperature))
        object.__setattr__(self, "top_p", float(self.top_p))
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p: must be in (0, 1], got {self.top_p!r}")
        _check_int("seed", self.seed, minimum=0)
        if self.seed > self.MAX_SEED:
            raise ValueError(f"seed: must be at most {self.MAX_SEED}, got {self.seed}")
        if not isinstance(self.system_prompt, str):
            raise ValueError(f"system_prompt: must be a string, got {type(self.system_prompt).__name__}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GenerationSettings:
        """Build settings from JSON data; missing keys take their defaults.

        Raises ``ValueError`` naming the key for an unknown key or a value of the wrong type
        or range. Integers are accepted for float fields; booleans are accepted for none.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"settings: must be an object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown setting (known: {', '.join(sorted(known))})")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GenerationRequest:
    """One output to generate. ``key`` is opaque to backends and returned unchanged."""

    key: Any
    prompt: str
    seed: int


@dataclass(frozen=True)
class GenerationResult:
    """What a backend reports for one request; exactly one of ``text`` and ``error`` is set.

    Token counts, latency and cost are ``None`` where the backend could not know them.
    A text-to-image backend sets ``text`` to ``""`` and ``image`` to the encoded image
    (PNG, JPEG or WebP bytes); ``settings`` holds what that one sample was made with (steps,
    guidance, scheduler, size, seed, device, dtype...), recorded on the output as is.
    """

    key: Any
    text: str | None
    error: str | None
    latency_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost: float | None = None
    image: bytes | None = None
    settings: dict[str, Any] | None = None

    @classmethod
    def failure(cls, key: Any, error: str) -> GenerationResult:
        return cls(key=key, text=None, error=error)


class Backend(Protocol):
    def generate(
        self, requests: list[GenerationRequest], settings: GenerationSettings
    ) -> list[GenerationResult]:
        """Return one result per request, in the order of ``requests``."""
        ...


# --- the operator's policy -------------------------------------------------------------


@dataclass(frozen=True)
class SpecPolicy:
    """What candidate specs may ask of the shared workers; the defaults are the safe ones.

    Built from settings by the Django side (``annotation.services.spec_policy``), on the web
    when a candidate is added and again on the worker before it generates, so a worker
    configured more strictly than the web refuses too.

    ``api_key_envs``
        Environment variables a spec may name as ``api_key_env``: exact names, or prefixes
        ending in ``*`` (setting ``EVALSITE_API_KEY_ENVS``).
    ``trust_remote_code``
        Whether ``trust_remote_code: true`` is allowed (``EVALSITE_TRUST_REMOTE_CODE``).
    ``model_roots``
        Directories that local model paths must resolve into (``EVALSITE_MODEL_ROOTS``).
    ``allow_hub_ids``
        Whether a hub id (``org/name``) may be given instead of a path
        (``EVALSITE_ALLOW_HUB_IDS``).
    ``base_urls``
        URL prefixes an OpenAI-compatible ``base_url`` must fall under; empty allows any
        (``EVALSITE_BASE_URLS``).
    ``diffusers_device``
        Where this worker runs diffusion pipelines: ``auto`` (CUDA when there is one, else
        the CPU), ``cpu``, ``cuda`` or ``cuda:N`` (``EVALSITE_DIFFUSERS_DEVICE``).
    """

    api_key_envs: tuple[str, ...] = ("EVALSITE_KEY_*",)
    trust_remote_code: bool = False
    model_roots: tuple[str, ...] = ()
    allow_hub_ids: bool = True
    base_urls: tuple[str, ...] = ()
    diffusers_device: str = "auto"

    def __post_init__(self) -> None:
        for name in ("api_key_envs", "model_roots", "base_urls"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    def key_env_allowed(self, name: str) -> bool:
        return any(
            name.startswith(item[:-1]) if item.endswith("*") else name == item for item in self.api_key_envs
        )


@dataclass(frozen=True)
class ModelLocation:
    """Where a model or tokenizer reference points: a hub id, or a directory under a root."""

    hub_id: str | None = None
    path: str | None = None  # resolved (realpath) on the machine that classified it
    root: str | None = None  # the resolved model root that holds ``path``


# A plain hub id: "org/name", each part starting with a letter or digit ("..", "./x" are not).
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def model_location(field: str, value: str, policy: SpecPolicy) -> ModelLocation:
    """Classify a ``model``/``tokenizer`` value under the policy; ``BackendError`` if refused.

    A hub id is allowed unless ``policy.allow_hub_ids`` is off. Anything else must be an
    absolute path whose real path (symlinks and ``..`` resolved on this machine) lies inside
    one of ``policy.model_roots``. Whether it exists is not checked here.
    """
    roots = ", ".join(policy.model_roots) or "none"
    if _HUB_ID.fullmatch(value) and ".." not in value:
        if not policy.allow_hub_ids:
            raise BackendError(
                field,
                f"{value} is a hub id, and this site loads models only from its model roots ({roots}); "
                "the operator can allow hub ids (setting EVALSITE_ALLOW_HUB_IDS=1)",
            )
        return ModelLocation(hub_id=value)
    if "\x00" in value or not os.path.isabs(value):
        raise BackendError(
            field,
            f"{value!r} is neither a hub id (org/name) nor an absolute path inside a model root; "
            f"the operator allows paths under {roots} (setting EVALSITE_MODEL_ROOTS)",
        )
    real = os.path.realpath(value)
    for root in policy.model_roots:
        real_root = os.path.realpath(root)
        if _inside(real, real_root):
            return ModelLocation(path=real, root=real_root)
    via = f" (it resolves to {real})" if real != value.rstrip(os.sep) else ""
    raise BackendError(
        field,
        f"{value} is not inside a model root{via}; the operator allows paths under {roots} "
        "(setting EVALSITE_MODEL_ROOTS)",
    )


def check_model_dir(field: str, value: str, policy: SpecPolicy, *, marker: str | None,
                    on_worker: bool) -> bool:
    """Check on this machine that a local model directory is there; hub ids are not looked at.

    Returns ``True`` when it was checked, ``False`` when it cannot be looked at here: a hub
    id, or a path whose model root does not exist here (a mount only the GPU workers have).
    On a worker (``on_worker=True``) a missing root is an error. ``marker`` is a file the
    directory must hold (``config.json`` for a model). Raises ``BackendError`` naming ``field``.
    """
    location = model_location(field, value, policy)
    if location.hub_id is not None:
        return False
    if not os.path.isdir(location.root):
        if on_worker:
            raise BackendError(field, f"the model root {location.root} does not exist on this worker")
        return False
    if not os.path.isdir(location.path):
        raise BackendError(field, f"no such model directory: {value}")
    if marker is not None and not os.path.isfile(os.path.join(location.path, marker)):
        raise BackendError(field, f"{value} has no {marker}, so it is not a saved Hugging Face model")
    return True


# --- scrubbing error text ---------------------------------------------------------------

ERROR_TEXT_LIMIT = 500
_SCAN_LIMIT = 100_000  # error bodies are cut to this before scrubbing; far more than is kept
_MIN_SECRET = 6  # shorter values would blank ordinary words
REMOVED = "[removed]"

# Request headers we send or a proxy adds, and credential headers: their values are never
# kept, whether they come back as "Name: value", JSON ("name": "value") or a repr.
_HEADER_NAMES = (
    r"(?:proxy-)?authorization|x-api-key|api-key|x-auth-token|cookie|set-cookie|"
    r"user-agent|host|accept(?:-encoding|-language)?|connection|content-length|content-type|"
    r"x-forwarded-for|x-real-ip|forwarded|via"
)
_HEADER_VALUE = re.compile(
    rf"""(?ix)
    (?P<name>(?<![\w-])(?:{_HEADER_NAMES}))
    (?P<sep>\\?["']?\s*[:=]\s*(?:b?\\?["'])?)
    (?P<value>[^"'\r\n,;}}\]]*)
    """
)
_CREDENTIAL = re.compile(r"(?i)\b(bearer|basic|digest)\s+[A-Za-z0-9._~+/=:-]{4,}")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _base64_forms(secret: bytes) -> set[str]:
    """The secret's base64 text at each alignment, so it is found inside a longer encoding
    (``Basic base64(user:key)``) as well as alone."""
    forms = set()
    for pad in range(3):
        encoded = base64.b64encode(b"\0" * pad + secret).decode().rstrip("=")
        start = (0, 2, 3)[pad]  # characters that mix in the padding bytes
        end = len(encoded) - (1 if (pad + len(secret)) % 3 else 0)
        core = encoded[start:end]
        if len(core) >= 8:
            forms.add(core)
            forms.add(core.replace("+", "-").replace("/", "_"))
    return forms


def _encoded_forms(secret: str) -> set[str]:
    forms = {
        secret,
        repr(secret)[1:-1],
        json.dumps(secret)[1:-1],
        quote(secret, safe=""),
        quote_plus(secret, safe=""),
    }
    raw = secret.encode("utf-8", "surrogatepass")
    forms.add(repr(raw)[2:-1])
    forms |= _base64_forms(raw)
    return {form for form in forms if len(form) >= _MIN_SECRET}


class Scrubber:
    """Cleans error text from an endpoint or a backend before it is stored, shown or logged.

    It removes each secret (the API key, and other credentials in the environment) in plain,
    repr-escaped, JSON-escaped, URL-encoded and base64 forms; the values of ``Authorization``,
    cookie and other request headers however they were dumped; ``Bearer``/``Basic``
    credentials; NUL and other control characters (PostgreSQL refuses NUL in text) and lone
    surrogates; then trims the text to ``limit`` characters.
    """

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        forms: set[str] = set()
        for secret in secrets:
            if secret and len(secret) >= _MIN_SECRET:
                forms |= _encoded_forms(secret)
        self._forms = sorted(forms, key=len, reverse=True)  # longest first: no half-removed form

    def __call__(self, text: Any, limit: int = ERROR_TEXT_LIMIT) -> str:
        text = str(text)[:_SCAN_LIMIT]
        text = _HEADER_VALUE.sub(lambda m: f"{m['name']}{m['sep']}{REMOVED}", text)
        text = _CREDENTIAL.sub(lambda m: f"{m[1]} {REMOVED}", text)
        for form in self._forms:
            text = text.replace(form, REMOVED)
        text = _CONTROL.sub(" ", text)
        text = text.encode("utf-8", "replace").decode("utf-8")
        if len(text) > limit:
            text = text[: limit - 1] + "…"
        return text


def scrub_error(text: Any, secrets: Iterable[str | None] = (), limit: int = ERROR_TEXT_LIMIT) -> str:
    """One-off ``Scrubber(secrets)(text, limit)``."""
    return Scrubber(secrets)(text, limit)


# The last word of a variable's name says it holds a credential: OPENAI_API_KEY, HF_TOKEN,
# SECRET_KEY, PGPASSWORD; not EVALSITE_API_KEY_ENVS (a list of names) or TOKENIZERS_PARALLELISM.
_SECRET_ENDINGS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIALS")


def environment_secrets(
    policy: SpecPolicy | None = None, environ: Mapping[str, str] | None = None
) -> list[str]:
    """Values in this process's environment that error text must never show.

    The variables a spec may name as its key (``policy.api_key_envs``), any variable whose
    name ends in a credential word (``*_KEY``, ``HF_TOKEN``, ``*_PASSWORD``...), and the
    password of any URL-valued variable (``DATABASE_URL``, the broker URL).
    """
    policy = policy or SpecPolicy()
    environ = os.environ if environ is None else environ
    values = []
    for name, value in environ.items():
        if not value:
            continue
        if policy.key_env_allowed(name) or name.upper().rsplit("_", 1)[-1].endswith(_SECRET_ENDINGS):
            values.append(value)
        elif "://" in value and "@" in value:
            try:
                password = urlsplit(value).password
            except ValueError:
                password = None
            if password:
                values.append(password)
    return values


# name -> "module:attribute"; modules are imported on first use so that asking for the
# OpenAI backend never imports torch.
_BACKENDS: dict[str, str] = {
    "openai": "annotation.generation.openai_backend",
    "transformers": "annotation.generation.transformers_backend",
    "diffusers": "annotation.generation.diffusers_backend",
    "openai_images": "annotation.generation.openai_images_backend",
}
BACKEND_NAMES: tuple[str, ...] = tuple(_BACKENDS)


def _backend_module(backend_name: str):
    if backend_name not in _BACKENDS:
        raise BackendError(
            "backend", f"unknown backend {backend_name!r} (known: {', '.join(BACKEND_NAMES)})"
        )
    return importlib.import_module(_BACKENDS[backend_name])


def validate_spec(
    backend_name: str, spec: Mapping[str, Any], policy: SpecPolicy | None = None
) -> dict[str, Any]:
    """Check a candidate's spec against its backend and the operator's policy.

    Returns the spec normalised (defaults filled in). Does not touch the network or torch,
    and reads the file system only to resolve model paths (``realpath``), so the web form
    can call it. ``policy`` defaults to ``SpecPolicy()``, the strictest. Raises
    ``BackendError`` whose ``field`` names the bad key; a policy refusal also names the
    setting that would allow it.
    """
    return _backend_module(backend_name).validate_spec(spec, policy or SpecPolicy())


def check_files(
    backend_name: str, spec: Mapping[str, Any], policy: SpecPolicy | None = None, *, on_worker: bool = False
) -> str:
    """Check that the files a validated spec names are there, on this machine.

    Returns ``""`` when the backend reads no files (an endpoint), ``"ok"`` when they were
    found, or ``"pending"`` when they live where this machine cannot look (a model root
    mounted only on the GPU workers, a hub id in the workers' cache): a worker must check
    them, with ``on_worker=True``, which never returns ``"pending"``. Raises
    ``BackendError`` naming the field when something is missing.
    """
    module = _backend_module(backend_name)
    check = getattr(module, "check_files", None)
    return check(spec, policy or SpecPolicy(), on_worker=on_worker) if check is not None else ""


def get_backend(backend_name: str, spec: Mapping[str, Any], policy: SpecPolicy | None = None) -> Backend:
    """Return a ready backend for a candidate; raises ``BackendError`` for a bad spec.

    The spec is validated again under ``policy`` (the worker's own settings), so a spec
    saved under a looser policy is refused here.
    """
    policy = policy or SpecPolicy()
    module = _backend_module(backend_name)
    return module.make_backend(module.validate_spec(spec, policy), policy)


def compute_cost(
    spec: Mapping[str, Any], prompt_tokens: int | None, completion_tokens: int | None
) -> float | None:
    """USD cost of one output from the spec's per-1000-token prices.

    ``None`` unless both prices are set and both token counts are known.
    """
    price_in = spec.get("price_per_1k_input")
    price_out = spec.get("price_per_1k_output")
    if price_in is None or price_out is None or prompt_tokens is None or completion_tokens is None:
        return None
    return (prompt_tokens * price_in + completion_tokens * price_out) / 1000


# --- spec checking helpers shared by the backends -------------------------------------


@dataclass(frozen=True)
class SpecField:
    """One allowed key of a backend spec: its check and its default (``REQUIRED`` if none)."""

    check: Callable[[str, Any], Any]
    default: Any = None


REQUIRED = object()


def check_spec(spec: Mapping[str, Any], schema: Mapping[str, SpecField]) -> dict[str, Any]:
    """Validate ``spec`` against ``schema``: no unknown keys, required keys present.

    Each check returns the normalised value or raises ``BackendError`` naming the key.
    A key given as ``None`` takes its default.
    """
    if not isinstance(spec, Mapping):
        raise BackendError("spec", f"must be an object, got {type(spec).__name__}")
    unknown = sorted(set(spec) - set(schema))
    if unknown:
        raise BackendError(str(unknown[0]), f"unknown field (known: {', '.join(sorted(schema))})")
    out: dict[str, Any] = {}
    for name, field in schema.items():
        value = spec.get(name)
        if value is None:
            if field.default is REQUIRED:
                raise BackendError(name, "is required")
            out[name] = field.default
        else:
            out[name] = field.check(name, value)
    return out


def spec_str(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BackendError(name, "must be a non-empty string")
    return value.strip()


def spec_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise BackendError(name, f"must be true or false, got {value!r}")
    return value


def spec_int(minimum: int, maximum: int | None = None) -> Callable[[str, Any], int]:
    def check(name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise BackendError(name, f"must be an integer, got {value!r}")
        if value < minimum or (maximum is not None and value > maximum):
            bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
            raise BackendError(name, f"must be {bound}, got {value}")
        return value

    return check


def spec_number(minimum: float, *, strict: bool = False) -> Callable[[str, Any], float]:
    def check(name: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise BackendError(name, f"must be a number, got {value!r}")
        if value < minimum or (strict and value == minimum):
            raise BackendError(name, f"must be {'>' if strict else '>='} {minimum}, got {value}")
        return float(value)

    return check


def spec_image_side(name: str, value: Any) -> int:
    """An image width or height: a multiple of 8 from 8 to 4096 (latent diffusion works on 8-pixel blocks)."""
    value = spec_int(8, 4096)(name, value)
    if value % 8:
        raise BackendError(name, f"must be a multiple of 8 (the autoencoder works on 8-pixel blocks), got {value}")
    return value


def spec_choice(*choices: str) -> Callable[[str, Any], str]:
    def check(name: str, value: Any) -> str:
        if value not in choices:
            raise BackendError(name, f"must be one of {', '.join(choices)}; got {value!r}")
        return value

    return check


PRICE_FIELDS: dict[str, SpecField] = {
    "price_per_1k_input": SpecField(spec_number(0.0)),
    "price_per_1k_output": SpecField(spec_number(0.0)),
}


def check_prices(spec: Mapping[str, Any]) -> None:
    """Both prices or neither: with one, every cost would silently be ``None``."""
    given = [name for name in PRICE_FIELDS if spec.get(name) is not None]
    if len(given) == 1:
        missing = next(name for name in PRICE_FIELDS if name not in given)
        raise BackendError(missing, f"is required when {given[0]} is set")


def _check_int(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}: must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: must be >= {minimum}, got {value}")


def _check_number(name: str, value: Any, *, minimum: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name}: must be a number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}: must be >= {minimum}, got {value}")
