"""The backend-neutral interface: settings, spec validation, cost, and light imports."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from annotation.generation import (
    BackendError,
    GenerationSettings,
    SpecPolicy,
    compute_cost,
    get_backend,
    validate_spec,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_settings_round_trip_through_a_dict():
    settings = GenerationSettings(max_new_tokens=32, temperature=1, top_p=0.9, seed=7, system_prompt="Be brief.")
    data = settings.to_dict()
    assert data == {
        "max_new_tokens": 32,
        "temperature": 1.0,
        "top_p": 0.9,
        "seed": 7,
        "system_prompt": "Be brief.",
    }
    assert isinstance(data["temperature"], float)
    assert GenerationSettings.from_dict(json.loads(json.dumps(data))) == settings


def test_settings_from_an_empty_dict_are_the_defaults():
    assert GenerationSettings.from_dict({}) == GenerationSettings()
    assert GenerationSettings().greedy


def test_settings_reject_an_unknown_key_by_name():
    with pytest.raises(ValueError, match=r"^max_tokens: unknown setting"):
        GenerationSettings.from_dict({"max_tokens": 10})


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"max_new_tokens": "10"}, "max_new_tokens"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": True}, "max_new_tokens"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"seed": 1.5}, "seed"),
        ({"system_prompt": None}, "system_prompt"),
    ],
)
def test_settings_reject_bad_values_naming_the_key(data, field):
    with pytest.raises(ValueError, match=rf"^{field}: "):
        GenerationSettings.from_dict(data)


@pytest.mark.parametrize(
    ("backend", "spec", "field"),
    [
        ("openai", {"model": "m"}, "base_url"),
        ("openai", {"base_url": "ftp://host/v1", "model": "m"}, "base_url"),
        ("openai", {"base_url": "http://h/v1"}, "model"),
        ("openai", {"base_url": "http://h/v1", "model": "m", "max_concurrency": 0}, "max_concurrency"),
        ("openai", {"base_url": "http://h/v1", "model": "m", "timeout_s": 0}, "timeout_s"),
        ("openai", {"base_url": "http://h/v1", "model": "m", "max_retries": -1}, "max_retries"),
        ("openai", {"base_url": "http://h/v1", "model": "m", "backoff_s": "1"}, "backoff_s"),
        ("openai", {"base_url": "http://h/v1", "model": "m", "extra_body": []}, "extra_body"),
        ("openai", {"base_url": "http://h/v1", "model": "m", "extra_body": {"model": "x"}}, "extra_body.model"),
        ("openai", {"base_url": "http://h/v1", "model": "m", "temperature": 0.5}, "temperature"),
        ("openai", {"base_url": "http://h/v1", "model": "m", "price_per_1k_input": 1.0}, "price_per_1k_output"),
        ("openai", {"base_url": "http://h/v1", "model": "m", "price_per_1k_output": -1}, "price_per_1k_output"),
        ("transformers", {}, "model"),
        ("transformers", {"model": "  "}, "model"),
        ("transformers", {"model": "m", "batch_size": 0}, "batch_size"),
        ("transformers", {"model": "m", "dtype": "float64"}, "dtype"),
        ("transformers", {"model": "m", "device": "gpu"}, "device"),
        ("transformers", {"model": "m", "chat_template": "yes"}, "chat_template"),
        ("transformers", {"model": "m", "trust_remote_code": 1}, "trust_remote_code"),
    ],
)
def test_validate_spec_errors_name_the_field(backend, spec, field):
    with pytest.raises(BackendError) as caught:
        validate_spec(backend, spec)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


def test_validate_spec_does_not_echo_a_key_pasted_as_the_variable_name():
    spec = {"base_url": "http://h/v1", "model": "m", "api_key_env": "sk-live-abc123"}
    with pytest.raises(BackendError) as caught:
        validate_spec("openai", spec)
    assert caught.value.field == "api_key_env"
    assert "sk-live-abc123" not in str(caught.value)


def test_validate_spec_fills_in_defaults():
    assert validate_spec("openai", {"base_url": "http://h:8001/v1/", "model": "m"}) == {
        "base_url": "http://h:8001/v1",
        "model": "m",
        "api_key_env": None,
        "max_concurrency": 4,
        "timeout_s": 60.0,
        "max_retries": 3,
        "backoff_s": 1.0,
        "extra_body": {},
        "price_per_1k_input": None,
        "price_per_1k_output": None,
    }
    assert validate_spec("transformers", {"model": "/models/x"}, SpecPolicy(model_roots=("/models",))) == {
        "model": "/models/x",
        "tokenizer": None,
        "batch_size": 8,
        "dtype": "float32",
        "device": "cpu",
        "chat_template": None,
        "trust_remote_code": False,
        "price_per_1k_input": None,
        "price_per_1k_output": None,
    }


def test_an_unknown_backend_is_a_backend_error():
    with pytest.raises(BackendError, match=r"^backend: unknown backend 'dalle'"):
        get_backend("dalle", {})


def test_cost_needs_both_prices_and_both_token_counts():
    spec = {"price_per_1k_input": 0.5, "price_per_1k_output": 1.5}
    assert compute_cost(spec, 1000, 2000) == pytest.approx(3.5)
    assert compute_cost(spec, None, 2000) is None
    assert compute_cost({"price_per_1k_input": 0.5}, 1000, 2000) is None


def test_importing_generation_loads_neither_torch_nor_django():
    code = """
import sys
import annotation.generation as generation
import annotation.generation.openai_backend
import annotation.generation.transformers_backend
import annotation.generation.diffusers_backend
import annotation.generation.openai_images_backend
import annotation.generation.tiny_models
generation.validate_spec("transformers", {"model": "/models/x"}, generation.SpecPolicy(model_roots=("/models",)))
generation.check_files("transformers", {"model": "org/name", "tokenizer": None}, generation.SpecPolicy())
generation.get_backend("openai", {"base_url": "http://127.0.0.1:9/v1", "model": "m"})
generation.validate_spec("diffusers", {"model": "/models/sd", "width": 512}, generation.SpecPolicy(model_roots=("/models",)))
generation.check_files("diffusers", {"model": "org/sd"}, generation.SpecPolicy())
generation.get_backend("openai_images", {"base_url": "http://127.0.0.1:9/v1", "model": "m"})
heavy = sorted(m for m in ("torch", "transformers", "tokenizers", "diffusers", "django") if m in sys.modules)
print(heavy)
"""
    completed = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"
