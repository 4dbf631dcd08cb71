"""The transformers backend with tiny models built offline into a temporary directory."""

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from annotation.generation import (  # noqa: E402
    BackendError,
    GenerationRequest,
    GenerationSettings,
    get_backend,
)
from annotation.generation.tiny_models import build_tiny_model  # noqa: E402
from annotation.generation.transformers_backend import load_model  # noqa: E402
from annotation.services import spec_policy  # noqa: E402

PROMPTS = [
    "Why is the sky blue?",
    "hi",
    "Write a short poem about autumn leaves and a cold wind on the river.",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-models")
    return {
        "causal": str(build_tiny_model(root / "tiny-gpt", kind="causal", seed=1, max_positions=64)),
        "seq2seq": str(build_tiny_model(root / "tiny-t5", kind="seq2seq", seed=2)),
        "chat": str(build_tiny_model(root / "tiny-chat", kind="causal", seed=3, chat_template=CHAT_TEMPLATE)),
    }


@pytest.fixture(scope="module", params=["causal", "seq2seq"])
def kind(request):
    # Module-scoped so pytest runs all tests of one kind together: the backend keeps one
    # model per process, and alternating kinds would reload it for every test.
    return request.param


def generate(model_dir, prompts, settings, *, seed=0, **spec):
    # the site's policy, whose model root (tests/conftest.py) holds pytest's temporary directories
    backend = get_backend("transformers", {"model": model_dir, **spec}, spec_policy())
    requests = [GenerationRequest(key=i, prompt=p, seed=seed) for i, p in enumerate(prompts)]
    return backend.generate(requests, settings)


def test_it_generates_a_batch_of_prompts_of_different_lengths_in_order(models, kind):
    from transformers import AutoTokenizer

    settings = GenerationSettings(max_new_tokens=10)
    spec = {"batch_size": 2, "price_per_1k_input": 1.0, "price_per_1k_output": 2.0}
    results = generate(models[kind], PROMPTS, settings, **spec)

    tokenizer = AutoTokenizer.from_pretrained(models[kind])
    assert [r.key for r in results] == [0, 1, 2]
    for prompt, result in zip(PROMPTS, results):
        assert result.error is None
        assert isinstance(result.text, str) and result.text
        assert result.prompt_tokens == len(tokenizer(prompt)["input_ids"])
        assert 0 < result.completion_tokens <= settings.max_new_tokens
        assert result.cost == pytest.approx((result.prompt_tokens + 2 * result.completion_tokens) / 1000)
        assert result.latency_ms > 0
    # batch_size 2: the first two share a batch and its wall time, the third is alone.
    assert results[0].latency_ms == results[1].latency_ms != results[2].latency_ms


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_the_same_seed_gives_the_same_text_twice(models, kind, temperature):
    settings = GenerationSettings(max_new_tokens=8, temperature=temperature, top_p=0.9)
    first = generate(models[kind], PROMPTS, settings, seed=5)
    second = generate(models[kind], PROMPTS, settings, seed=5)
    assert [r.text for r in first] == [r.text for r in second]


def test_sampling_with_another_seed_gives_other_text(models):
    settings = GenerationSettings(max_new_tokens=8, temperature=1.0)
    five = generate(models["causal"], PROMPTS, settings, seed=5)
    six = generate(models["causal"], PROMPTS, settings, seed=6)
    assert all(a.text != b.text for a, b in zip(five, six))


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_prompt_gets_the_same_text_alone_or_padded_in_a_batch(models, kind, temperature):
    # Exact equality holds here: float32 on CPU, and padded positions are masked out. On
    # other hardware a padded row may differ in the last bits and flip a near-tie.
    settings = GenerationSettings(max_new_tokens=8, temperature=temperature)
    batched = generate(models[kind], PROMPTS, settings, seed=3, batch_size=3)
    for index, prompt in enumerate(PROMPTS):
        [alone] = generate(models[kind], [prompt], settings, seed=3, batch_size=1)
        assert alone.text == batched[index].text
        assert alone.completion_tokens == batched[index].completion_tokens


def test_a_prompt_longer_than_the_context_is_an_error_result_and_the_others_go_on(models):
    settings = GenerationSettings(max_new_tokens=8)
    results = generate(models["causal"], ["short", "word " * 80, "also short"], settings)
    assert results[0].error is None and results[2].error is None
    assert results[1].text is None
    assert "exceeds the model's context of 64 tokens" in results[1].error


def test_an_empty_prompt_still_generates(models):
    [result] = generate(models["causal"], [""], GenerationSettings(max_new_tokens=4))
    assert result.error is None
    assert result.prompt_tokens == 1  # just <s>


def test_the_chat_template_is_used_when_the_tokenizer_has_one(models):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(models["chat"])
    settings = GenerationSettings(max_new_tokens=4, system_prompt="Be brief.")
    [templated] = generate(models["chat"], ["hello there"], settings)
    [raw] = generate(models["chat"], ["hello there"], settings, chat_template=False)
    formatted = "system: Be brief.\nuser: hello there\nassistant:"
    assert templated.prompt_tokens == len(tokenizer(formatted, add_special_tokens=False)["input_ids"])
    assert raw.prompt_tokens == len(tokenizer("Be brief.\n\nhello there")["input_ids"])


def test_asking_for_a_chat_template_the_tokenizer_lacks_is_a_backend_error(models):
    with pytest.raises(BackendError) as caught:
        generate(models["causal"], ["hi"], GenerationSettings(), chat_template=True)
    assert caught.value.field == "chat_template"


def test_a_missing_model_directory_is_a_backend_error_naming_the_path(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(BackendError) as caught:
        generate(str(missing), ["hi"], GenerationSettings())
    assert caught.value.field == "model"
    assert str(missing) in str(caught.value)


def test_a_directory_without_a_model_is_a_backend_error_naming_it(tmp_path):
    with pytest.raises(BackendError) as caught:
        generate(str(tmp_path), ["hi"], GenerationSettings())
    assert caught.value.field == "model"
    assert str(tmp_path) in str(caught.value)


def test_a_missing_tokenizer_directory_is_a_backend_error_naming_the_tokenizer(models, tmp_path):
    with pytest.raises(BackendError) as caught:
        generate(models["causal"], ["hi"], GenerationSettings(), tokenizer=str(tmp_path / "nope"))
    assert caught.value.field == "tokenizer"


def test_the_loaded_model_is_reused_until_another_is_asked_for(models):
    spec = {"model": models["causal"], "tokenizer": None, "dtype": "float32", "device": "cpu", "trust_remote_code": False}
    first = load_model(spec, spec_policy())
    assert load_model(spec, spec_policy()) is first
    load_model({**spec, "model": models["seq2seq"]}, spec_policy())
    assert load_model(spec, spec_policy()) is not first
