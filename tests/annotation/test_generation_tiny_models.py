"""Tiny offline models: they load with the Auto classes, rebuild only when asked, and are seeded."""

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from annotation.generation.tiny_models import MARKER, build_tiny_model  # noqa: E402

SMALL = {"size": 16, "vocab_size": 300, "num_layers": 1}


def mtimes(directory):
    return {p.name: p.stat().st_mtime_ns for p in directory.iterdir()}


def weights(directory):
    from safetensors.torch import load_file

    return load_file(directory / "model.safetensors")


@pytest.mark.parametrize(("kind", "auto_name"), [("causal", "AutoModelForCausalLM"), ("seq2seq", "AutoModelForSeq2SeqLM")])
def test_a_built_model_loads_with_the_auto_classes_offline(tmp_path, monkeypatch, kind, auto_name):
    import transformers

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = build_tiny_model(tmp_path / "m", kind=kind, seed=0, **SMALL)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = getattr(transformers, auto_name).from_pretrained(path, local_files_only=True)
    assert model.config.is_encoder_decoder == (kind == "seq2seq")
    assert tokenizer.pad_token == "<pad>" and tokenizer.eos_token == "</s>"
    assert tokenizer.decode(tokenizer("the quick fox")["input_ids"], skip_special_tokens=True) == "the quick fox"
    size = sum(p.stat().st_size for p in path.iterdir())
    assert size < 2_000_000


def test_a_second_build_with_the_same_arguments_rewrites_nothing(tmp_path):
    path = build_tiny_model(tmp_path / "m", seed=0, **SMALL)
    before = mtimes(path)
    assert build_tiny_model(tmp_path / "m", seed=0, **SMALL) == path
    assert mtimes(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no staging left behind


def test_the_same_seed_gives_the_same_weights_and_tokenizer(tmp_path):
    import torch

    a = weights(build_tiny_model(tmp_path / "a", seed=7, **SMALL))
    b = weights(build_tiny_model(tmp_path / "b", seed=7, **SMALL))
    c = weights(build_tiny_model(tmp_path / "c", seed=8, **SMALL))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert not all(torch.equal(a[name], c[name]) for name in a)
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()


def test_the_order_of_the_corpus_does_not_matter(tmp_path):
    corpus = ["one fish two fish", "red fish blue fish", "a cat in a hat"]
    build_tiny_model(tmp_path / "a", seed=0, corpus=corpus, **SMALL)
    before = mtimes(tmp_path / "a")
    build_tiny_model(tmp_path / "a", seed=0, corpus=corpus[::-1], **SMALL)
    assert mtimes(tmp_path / "a") == before


def test_building_leaves_the_global_torch_random_state_alone(tmp_path):
    import torch

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_model(tmp_path / "m", seed=0, **SMALL)
    assert torch.equal(torch.rand(3), expected)


def test_other_arguments_rebuild_the_model_in_place(tmp_path):
    import torch

    first = weights(build_tiny_model(tmp_path / "m", seed=1, **SMALL))
    second = weights(build_tiny_model(tmp_path / "m", seed=2, **SMALL))
    assert not all(torch.equal(first[name], second[name]) for name in first)
    assert '"seed": 2' in (tmp_path / "m" / MARKER).read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_it_refuses_to_overwrite_a_directory_it_did_not_build(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        build_tiny_model(tmp_path / "m", seed=0, **SMALL)
    assert (tmp_path / "m" / "notes.txt").read_text() == "mine"
