"""The backend-neutral side of generation: settings, requests, results, spec checks.

Nothing here imports Django, torch or transformers, so the web process can validate a
candidate's spec and the Celery worker can pick a backend with the same code. A backend
module is imported only when ``get_backend`` or ``validate_spec`` asks for it, and backend
modules themselves import their heavy libraries inside the functions that need them.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol


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
    """

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    system_prompt: str = ""

    def __post_init__(self) -> None:
        _check_int("max_new_tokens", self.max_new_tokens, minimum=1)
        _check_number("temperature", self.temperature, minimum=0.0)
        _check_number("top_p", self.top_p, minimum=0.0)
        # Frozen: normalise ints given for float fields so to_dict() round-trips exactly.
        object.__setattr__(self, "temperature", float(self.temperature))
        object.__setattr__(self, "top_p", float(self.top_p))
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p: must be in (0, 1], got {self.top_p!r}")
        _check_int("seed", self.seed, minimum=0)
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
    """

    key: Any
    text: str | None
    error: str | None
    latency_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost: float | None = None

    @classmethod
    def failure(cls, key: Any, error: str) -> GenerationResult:
        return cls(key=key, text=None, error=error)


class Backend(Protocol):
    def generate(
        self, requests: list[GenerationRequest], settings: GenerationSettings
    ) -> list[GenerationResult]:
        """Return one result per request, in the order of ``requests``."""
        ...


# name -> "module:attribute"; modules are imported on first use so that asking for the
# OpenAI backend never imports torch.
_BACKENDS: dict[str, str] = {
    "openai": "annotation.generation.openai_backend",
    "transformers": "annotation.generation.transformers_backend",
}
BACKEND_NAMES: tuple[str, ...] = tuple(_BACKENDS)


def _backend_module(backend_name: str):
    if backend_name not in _BACKENDS:
        raise BackendError(
            "backend", f"unknown backend {backend_name!r} (known: {', '.join(BACKEND_NAMES)})"
        )
    return importlib.import_module(_BACKENDS[backend_name])


def validate_spec(backend_name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    """Check a candidate's spec and return it normalised (defaults filled in).

    Does not touch the network, the file system or torch, so the web form can call it.
    Raises ``BackendError`` whose ``field`` names the bad key.
    """
    return _backend_module(backend_name).validate_spec(spec)


def get_backend(backend_name: str, spec: Mapping[str, Any]) -> Backend:
    """Return a ready backend for a candidate; raises ``BackendError`` for a bad spec."""
    module = _backend_module(backend_name)
    return module.make_backend(module.validate_spec(spec))


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
