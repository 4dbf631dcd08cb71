"""Text-to-image generation: the diffusers and OpenAI-compatible images backends, and storing images.

The diffusers tests run a real (tiny, random) Stable Diffusion pipeline built from configs by
``build_tiny_diffusion_pipeline``; the images endpoint is the fake OpenAI server's real HTTP route.
"""
from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path

import pytest
from django.conf import settings
from PIL import Image

from annotation import services
from annotation.generation import BackendError, GenerationRequest, GenerationSettings, SpecPolicy, validate_spec
from annotation.generation.base import GenerationResult, get_backend
from annotation.generation.diffusers_backend import clear_pipeline_cache
from annotation.generation.tiny_models import build_tiny_diffusion_pipeline
from annotation.models import Candidate
from annotation.tasks import generate_outputs
from tests.conftest import wait_for
from tests.helpers.fake_openai import FakeOpenAIServer, image_for

PROMPTS_2 = (
    "id,prompt,reference,tags\n"
    "b1,a red shoe on a summer sale banner,,product shot\n"
    "b2,people with coffee in the city at night,,people\n"
).encode()
OPAQUE = re.compile(r"outputs/(\d+)/(thumbs/)?[0-9a-f]{32}\.png")


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
    # under pytest's base temporary directory: the model root of this process and of the worker
    return str(build_tiny_diffusion_pipeline(tmp_path_factory.mktemp("pipelines") / "tiny-sd", seed=4))


def _png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    image.load()
    return image


# --- specs -------------------------------------------------------------------------------

ROOTS = SpecPolicy(model_roots=("/models",))


@pytest.mark.parametrize(
    ("backend", "spec", "field", "words"),
    [
        ("diffusers", {}, "model", "is required"),
        ("diffusers", {"model": "/elsewhere/sd"}, "model", "not inside a model root"),
        ("diffusers", {"model": "/models/sd", "steps": 0}, "steps", "between 1 and 1000"),
        ("diffusers", {"model": "/models/sd", "steps": 2.5}, "steps", "must be an integer"),
        ("diffusers", {"model": "/models/sd", "guidance_scale": -1}, "guidance_scale", ">= 0.0"),
        ("diffusers", {"model": "/models/sd", "guidance_scale": 80}, "guidance_scale", "between 0 and 50"),
        ("diffusers", {"model": "/models/sd", "scheduler": "karras"}, "scheduler", "must be one of ddim, pndm"),
        ("diffusers", {"model": "/models/sd", "width": 500}, "width", "multiple of 8"),
        ("diffusers", {"model": "/models/sd", "height": 8192}, "height", "between 8 and 4096"),
        ("diffusers", {"model": "/models/sd", "negative_prompt": 3}, "negative_prompt", "must be a string"),
        ("diffusers", {"model": "/models/sd", "dtype": "int8"}, "dtype", "auto, float32, float16, bfloat16"),
        ("diffusers", {"model": "/models/sd", "batch_size": 0}, "batch_size", "between 1 and 64"),
        ("diffusers", {"model": "/models/sd", "price_per_image": -0.1}, "price_per_image", ">= 0.0"),
        ("diffusers", {"model": "/models/sd", "device": "cuda"}, "device", "unknown field"),
        ("openai_images", {"model": "m"}, "base_url", "is required"),
        ("openai_images", {"base_url": "http://h/v1?x=1", "model": "m"}, "base_url", "query"),
        ("openai_images", {"base_url": "http://h/v1", "model": "m", "width": 100}, "width", "multiple of 8"),
        ("openai_images", {"base_url": "http://h/v1", "model": "m", "extra_body": {"n": 4}}, "extra_body.n",
         "cannot be overridden"),
        ("openai_images", {"base_url": "http://h/v1", "model": "m", "api_key_env": "DATABASE_URL"}, "api_key_env",
         "EVALSITE_API_KEY_ENVS"),
    ],
)
def test_spec_errors_name_the_field(backend, spec, field, words):
    with pytest.raises(BackendError) as caught:
        validate_spec(backend, spec, ROOTS)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ") and words in str(caught.value)


def test_specs_fill_in_their_defaults():
    assert validate_spec("diffusers", {"model": "/models/sd"}, ROOTS) == {
        "model": "/models/sd", "steps": 30, "guidance_scale": 7.5, "scheduler": None, "width": None,
        "height": None, "negative_prompt": "", "dtype": "auto", "batch_size": 4, "price_per_image": None,
    }
    spec = validate_spec("openai_images", {"base_url": "http://h/v1/", "model": "m"}, ROOTS)
    assert (spec["base_url"], spec["width"], spec["height"], spec["extra_body"]) == ("http://h/v1", 1024, 1024, {})


@pytest.mark.django_db
def test_a_pipeline_directory_without_model_index_is_refused_when_the_candidate_is_added(evaluator, tmp_path):
    study = services.study_create(name="Banners", created_by=evaluator, prompts_data=PROMPTS_2,
                                  prompts_filename="p.csv")
    (tmp_path / "not-a-pipeline").mkdir()
    with pytest.raises(services.ServiceError, match="model: .*has no model_index.json"):
        services.candidate_create(study=study, name="broken", backend="diffusers",
                                  spec={"model": str(tmp_path / "not-a-pipeline")})
    assert not study.candidates.exists()


# --- the tiny pipeline and the backend, in process ---------------------------------------------


def test_the_tiny_pipeline_loads_offline_as_a_stable_diffusion_pipeline(tiny_pipeline):
    from diffusers import DiffusionPipeline

    pipeline = DiffusionPipeline.from_pretrained(tiny_pipeline, local_files_only=True)
    assert type(pipeline).__name__ == "StableDiffusionPipeline"
    assert pipeline.safety_checker is None and type(pipeline.scheduler).__name__ == "DDIMScheduler"
    assert pipeline.unet.config.cross_attention_dim == pipeline.text_encoder.config.hidden_size
    # building again with the same arguments leaves the files as they are
    before = {p: p.stat().st_mtime_ns for p in Path(tiny_pipeline).rglob("*") if p.is_file()}
    build_tiny_diffusion_pipeline(tiny_pipeline, seed=4)
    assert {p: p.stat().st_mtime_ns for p in Path(tiny_pipeline).rglob("*") if p.is_file()} == before


def test_the_backend_makes_pngs_of_the_asked_size_seed_by_seed(tiny_pipeline):
    policy = SpecPolicy(model_roots=(str(Path(tiny_pipeline).parent),))
    spec = {"model": tiny_pipeline, "steps": 2, "width": 40, "height": 24, "batch_size": 2,
            "scheduler": "euler_a", "negative_prompt": "blurry", "dtype": "bfloat16", "price_per_image": 0.002}
    requests = [GenerationRequest(key=i, prompt=p, seed=s) for i, (p, s) in
                enumerate([("a red shoe", 11), ("a blue cup", 12), ("a red shoe", 11), ("a red shoe", 13)])]
    first = get_backend("diffusers", spec, policy).generate(requests, GenerationSettings())
    clear_pipeline_cache()  # a fresh load, as another worker would do
    backend = get_backend("diffusers", spec, policy)
    second = backend.generate(requests, GenerationSettings())
    third = backend.generate(requests, GenerationSettings())  # the loaded pipeline, reused
    assert [r.key for r in first] == [0, 1, 2, 3] and all(r.error is None and r.text == "" for r in first)
    for result in first:
        assert _png(result.image).size == (40, 24)
        assert result.cost == 0.002 and result.latency_ms > 0
    assert [r.image for r in first] == [r.image for r in second] == [r.image for r in third]  # same seeds, same bytes
    assert first[0].image == first[2].image  # the same seed in another batch
    assert len({first[0].image, first[1].image, first[3].image}) == 3  # another prompt or seed: others
    assert first[0].settings == {
        "backend": "diffusers", "steps": 2, "guidance_scale": 7.5, "scheduler": "euler_a", "width": 40,
        "height": 24, "negative_prompt": "blurry", "seed": 11, "device": "cpu", "dtype": "float32",
        "dtype_requested": "bfloat16",
        "note": "bfloat16 asked for, but this worker runs pipelines on cpu: ran in float32",
    }


# --- storing, in process ----------------------------------------------------------------------


def _image_study(evaluator, *, samples: int = 2, seed: int = 5):
    return services.study_create(
        name="Banner concepts", created_by=evaluator, prompts_data=PROMPTS_2, prompts_filename="p.csv",
        samples_per_prompt=samples, generation_settings={"seed": seed},
    )


def _run(candidate, claim):
    ids = list(candidate.outputs.order_by("pk").values_list("pk", flat=True))
    return services.generation_run(candidate_id=candidate.pk, output_ids=ids, claim=claim)


def _files(study_id) -> list[str]:
    root = Path(settings.MEDIA_ROOT) / "outputs" / str(study_id)
    return sorted(str(p.relative_to(settings.MEDIA_ROOT)) for p in root.rglob("*.png")) if root.exists() else []


@pytest.mark.django_db
def test_images_are_stored_with_thumbnails_settings_and_opaque_names_once(
        evaluator, tiny_pipeline, settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path / "media")
    study = _image_study(evaluator)
    spec = {"model": tiny_pipeline, "steps": 2, "guidance_scale": 5.0, "scheduler": "ddim", "width": 32,
            "height": 32, "negative_prompt": "text, watermark", "batch_size": 3, "price_per_image": 0.01}
    # two candidates with the same pipeline and settings: separate outputs, the same images
    first = services.candidate_create(study=study, name="SecretModel-XL", backend="diffusers", spec=spec)
    twin = services.candidate_create(study=study, name="twin", backend="diffusers", spec=spec)
    assert first.check_state == Candidate.Check.OK
    assert services.generation_start(study=study) == 8  # queued; the tasks would run on commit
    assert _run(first, "run-1") == 4 and _run(twin, "run-2") == 4

    outputs = list(study.outputs.select_related("prompt", "candidate").order_by("candidate__name", "pk"))
    assert [o.status for o in outputs] == ["done"] * 8, [o.error for o in outputs]
    by_key = {}
    for o in outputs:
        assert o.text == "" and o.html == "" and o.cost == 0.01 and o.latency_ms > 0
        assert o.seed == 5 + o.sample_index
        assert o.settings == {
            "backend": "diffusers", "steps": 2, "guidance_scale": 5.0, "scheduler": "ddim", "width": 32,
            "height": 32, "negative_prompt": "text, watermark", "seed": o.seed, "device": "cpu",
            "dtype": "float32",
        }
        for field, thumbs in ((o.image, "thumbs/"), (o.thumbnail, "thumbs/")):
            match = OPAQUE.fullmatch(field.name)
            assert match and match[1] == str(study.pk), field.name
            assert "secret" not in field.name.lower() and "twin" not in field.name
        assert "/thumbs/" not in o.image.name and "/thumbs/" in o.thumbnail.name
        with o.image.open("rb") as fh:
            data = fh.read()
        with o.thumbnail.open("rb") as fh:
            thumb = _png(fh.read())
        assert _png(data).size == (32, 32) and thumb.size == (32, 32)  # small images keep their size
        by_key.setdefault((o.prompt_id, o.sample_index), []).append(hashlib.sha256(data).hexdigest())
    assert all(len(set(pair)) == 1 for pair in by_key.values())  # same seed, same bytes, two outputs
    assert len({pair[0] for pair in by_key.values()}) == 4  # another prompt or sample seed: other bytes
    files = _files(study.pk)
    assert len(files) == 16

    # the same task again (redelivered), another task for the same batch: nothing written twice
    assert _run(first, "run-1") == 0 and _run(first, "run-3") == 0
    assert _files(study.pk) == files
    assert [(o.image.name, o.thumbnail.name) for o in study.outputs.order_by("candidate__name", "pk")] == [
        (o.image.name, o.thumbnail.name) for o in outputs]
    # one pair per prompt (the two grids of its samples), never closed as a "tie by rule" for
    # their equal (empty) texts
    assert study.units.count() == 2 and not study.units.filter(rule_tie=True).exists()


@pytest.mark.django_db
def test_a_result_for_a_lost_claim_leaves_no_file(evaluator, tiny_pipeline, settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path / "media")
    study = _image_study(evaluator, samples=1)
    cand = services.candidate_create(study=study, name="c", backend="diffusers", spec={"model": tiny_pipeline})
    services.generation_start(study=study)
    output = cand.outputs.first()
    assert services.generation_claim(output_ids=[output.pk], claim="holder") == [output.pk]
    result = GenerationResult(key=output.pk, text="", error=None, image=image_for("x", 1, 16, 16),
                              settings={"seed": 1})
    assert services.generation_record(output_id=output.pk, claim="someone-else", result=result) is False
    assert _files(study.pk) == []
    output.refresh_from_db()
    assert (output.status, output.image.name, output.settings.get("seed")) == ("running", "", 5)
    # bytes that are no image fail the output with the reason, and store nothing
    broken = GenerationResult(key=output.pk, text="", error=None, image=b"\x89PNG\r\n\x1a\n-cut-", settings={})
    assert services.generation_record(output_id=output.pk, claim="holder", result=broken) is True
    output.refresh_from_db()
    assert output.status == "failed" and output.error.startswith("the backend's image: not a readable image")
    assert _files(study.pk) == []


@pytest.mark.django_db
def test_an_images_endpoint_candidate_stores_the_decoded_png_and_a_256_pixel_thumbnail(
        evaluator, settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path / "media")
    study = _image_study(evaluator, samples=1, seed=21)
    with FakeOpenAIServer() as server:
        cand = services.candidate_create(study=study, name="hosted", backend="openai_images", spec={
            "base_url": server.base_url, "model": "img-1", "width": 512, "height": 384,
            "extra_body": {"quality": "hd"}, "price_per_image": 0.04})
        services.generation_start(study=study)
        assert _run(cand, "run-1") == 2
        bodies = sorted(server.bodies, key=lambda b: b["prompt"])
    assert bodies[0] == {"model": "img-1", "prompt": "a red shoe on a summer sale banner", "n": 1,
                         "size": "512x384", "response_format": "b64_json", "seed": 21, "quality": "hd"}
    for o in study.outputs.select_related("prompt"):
        with o.image.open("rb") as fh:
            assert fh.read() == image_for(o.prompt.text, 21, 512, 384)  # the server's bytes, as sent
        with o.thumbnail.open("rb") as fh:
            assert _png(fh.read()).size == (256, 192)  # 256 on the long side, aspect kept
        assert o.cost == 0.04 and o.settings == {
            "backend": "openai_images", "model": "img-1", "width": 512, "height": 384,
            "size_requested": "512x384", "seed": 21, "quality": "hd"}


# --- through a real worker ------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_worker_generates_an_image_study_once_even_when_the_task_runs_again(
        celery_worker_process, tiny_pipeline, evaluator):
    study = _image_study(evaluator, samples=2, seed=3)
    # the worker writes under this process's MEDIA_ROOT (the same EVALSITE_VAR_DIR), which may hold
    # files of earlier runs of a study with the same id: only new files count
    before = set(_files(study.pk))
    with FakeOpenAIServer(fail_first=1, fail_status=500) as server:
        local = services.candidate_create(study=study, name="tiny-sd", backend="diffusers", spec={
            "model": tiny_pipeline, "steps": 2, "width": 32, "height": 32, "batch_size": 2})
        hosted = services.candidate_create(study=study, name="hosted", backend="openai_images", spec={
            "base_url": server.base_url, "model": "img-1", "width": 64, "height": 48, "backoff_s": 0.05})
        assert services.generation_start(study=study) == 8

        def finished():
            return not study.outputs.exclude(status__in=["done", "failed"]).exists()

        wait_for(finished, what="image generation", worker=celery_worker_process)
        outputs = list(study.outputs.select_related("candidate", "prompt").order_by("pk"))
        assert [o.status for o in outputs] == ["done"] * 8, [o.error for o in outputs]
        stored = set(_files(study.pk)) - before
        assert stored == {f.name for o in outputs for f in (o.image, o.thumbnail)}
        assert len(stored) == 16 and all(OPAQUE.fullmatch(name) for name in stored)
        for o in outputs:
            with o.image.open("rb") as fh:
                image = _png(fh.read())
            if o.candidate_id == local.pk:
                assert image.size == (32, 32) and o.settings["steps"] == 2 and o.settings["device"] == "cpu"
            else:
                assert image.size == (64, 48)
            assert o.settings["seed"] == o.seed == 3 + o.sample_index
        assert server.request_count == 5  # four images plus one retried 500

        # the same batches sent to the worker again: each finds its outputs done and writes nothing
        for cand in (local, hosted):
            ids = [o.pk for o in outputs if o.candidate_id == cand.pk]
            task_id = f"again-{cand.pk}"
            generate_outputs.apply_async(args=[cand.pk, ids], task_id=task_id)
            wait_for(lambda: f"[{task_id}] succeeded" in celery_worker_process.log_path.read_text(),
                     what="the repeated task", worker=celery_worker_process)
            assert re.search(rf"\[{task_id}\] succeeded in [0-9.]+s: 0\b", celery_worker_process.log_path.read_text())
        assert services.generation_start(study=study) == 0
        assert server.request_count == 5
    assert set(_files(study.pk)) - before == stored
    assert [(o.image.name, o.thumbnail.name) for o in study.outputs.order_by("pk")] == [
        (o.image.name, o.thumbnail.name) for o in outputs]
    assert study.outputs.count() == 8
    wait_for(lambda: study.units.count() == 2, what="units (one grid pair per prompt)", worker=celery_worker_process)
    assert not study.units.filter(rule_tie=True).exists()
    for name in stored:
        (Path(settings.MEDIA_ROOT) / name).unlink()


def test_a_scheduler_chosen_by_one_spec_does_not_stick_to_the_shared_pipeline(tiny_pipeline):
    policy = SpecPolicy(model_roots=(str(Path(tiny_pipeline).parent),))
    base = {"model": tiny_pipeline, "steps": 2, "width": 32, "height": 32}
    request = [GenerationRequest(key=0, prompt="a cat", seed=9)]
    clear_pipeline_cache()
    (plain,) = get_backend("diffusers", base, policy).generate(request, GenerationSettings())
    (euler,) = get_backend("diffusers", {**base, "scheduler": "euler_a"}, policy).generate(request, GenerationSettings())
    (again,) = get_backend("diffusers", base, policy).generate(request, GenerationSettings())
    assert plain.settings["scheduler"] == again.settings["scheduler"] == "DDIMScheduler"
    assert euler.settings["scheduler"] == "euler_a" and euler.image != plain.image
    assert again.image == plain.image
    assert "note" not in plain.settings and plain.settings["dtype"] == "float32"  # auto on a CPU
