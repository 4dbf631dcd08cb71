"""Generating candidates' outputs: one interface, one module per backend.

Importing this package (or ``validate_spec``) imports neither Django nor torch; the
transformers backend imports torch when it first generates. See ``base`` for the types.
"""

from .base import (
    BACKEND_NAMES,
    Backend,
    BackendError,
    GenerationRequest,
    GenerationResult,
    GenerationSettings,
    Scrubber,
    SpecPolicy,
    check_files,
    compute_cost,
    environment_secrets,
    get_backend,
    scrub_error,
    validate_spec,
)

__all__ = [
    "BACKEND_NAMES",
    "Backend",
    "BackendError",
    "GenerationRequest",
    "GenerationResult",
    "GenerationSettings",
    "Scrubber",
    "SpecPolicy",
    "check_files",
    "compute_cost",
    "environment_secrets",
    "get_backend",
    "scrub_error",
    "validate_spec",
]
