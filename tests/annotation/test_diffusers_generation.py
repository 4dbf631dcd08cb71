"""Text-to-image generation: the diffusers and OpenAI-compatible images backends, and storing images.

The diffusers tests run a real (tiny, random) Stable Diffusion pipeline built from configs by
``build_tiny_diffusion_pipeline``; the images endpoint is the fake OpenAI server's real HTTP route.
"""
from __future__ import annotations

import base64
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
from tests.helpers.images import SECRET, assert_bare_png, images_with_metadata

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
        ("openai_images", {"base_url": "http://h/v1", "model": "m", "response_format": "url"}, "response_format",
         'must be "b64_json" or null'),
        ("openai_images", {"base_url": "http://h/v1", "model": "m", "response_format": 1}, "response_format",
         "gpt-image models"),
        ("openai_images", {"base_url": "http://h/v1", "model": "m", "send_seed": "no"}, "send_seed",
         "must be true or false"),
        ("openai_images", {"base_url": "http://h/v1", "model": "m", "batch_size": 0}, "batch_size",
         "between 1 and 256"),
        ("openai_images", {"base_url": "http://h/v1", "model": "m", "extra_body": {"response_format": None}},
         "extra_body.response_format", "cannot be overridden"),
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
    assert (spec["response_format"], spec["send_seed"], spec["batch_size"]) == ("b64_json", True, 8)
    # null leaves response_format out (unlike other fields, where null takes the default), and the
    # normalised spec, saved and checked again by a worker, still leaves it out
    spec = validate_spec("openai_images", {"base_url": "http://h/v1", "model": "m", "response_format": None,
                                           "send_seed": False, "batch_size": 2}, ROOTS)
    assert (spec["response_format"], spec["send_seed"], spec["batch_size"]) == (None, False, 2)
    assert validate_spec("openai_images", spec, ROOTS) == spec


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
        assert o.seed == 5 + 2 * o.prompt.position + o.sample_index  # a seed per prompt and sample
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
    assert bodies == [  # one seed per prompt: the study's seed plus the prompt's position
        {"model": "img-1", "prompt": "a red shoe on a summer sale banner", "n": 1, "size": "512x384",
         "response_format": "b64_json", "seed": 21, "quality": "hd"},
        {"model": "img-1", "prompt": "people with coffee in the city at night", "n": 1, "size": "512x384",
         "response_format": "b64_json", "seed": 22, "quality": "hd"},
    ]
    for o in study.outputs.select_related("prompt"):
        with o.image.open("rb") as fh:
            stored = _png(fh.read())
        sent = _png(image_for(o.prompt.text, o.seed, 512, 384))
        assert stored.tobytes() == sent.tobytes() and stored.mode == sent.mode  # the server's pixels
        with o.thumbnail.open("rb") as fh:
            assert _png(fh.read()).size == (256, 192)  # 256 on the long side, aspect kept
        assert o.cost == 0.04 and o.settings == {
            "backend": "openai_images", "model": "img-1", "width": 512, "height": 384,
            "size_requested": "512x384", "seed": 21 + o.prompt.position, "quality": "hd"}


@pytest.mark.django_db
def test_every_stored_image_is_a_png_without_the_metadata_it_came_with(evaluator, settings, tmp_path):
    """PNG text chunks (an A1111/ComfyUI workflow naming its model), EXIF, a JPEG comment, a C2PA
    segment and XMP never reach annotators; nor does the file type: every image is a bare .png."""
    settings.MEDIA_ROOT = str(tmp_path / "media")
    study = _image_study(evaluator, samples=2)
    cand = services.candidate_create(study=study, name="hosted", backend="openai_images",
                                     spec={"base_url": "http://127.0.0.1:9/v1", "model": "m"})
    services.generation_start(study=study)
    outputs = list(cand.outputs.order_by("pk"))
    assert services.generation_claim(output_ids=[o.pk for o in outputs], claim="c") == [o.pk for o in outputs]
    sources = images_with_metadata()
    for output, (kind, data) in zip(outputs, sources.items()):
        assert SECRET.encode() in data, kind
        result = GenerationResult(key=output.pk, text="", error=None, image=data, settings={"seed": output.seed})
        assert services.generation_record(output_id=output.pk, claim="c", result=result) is True
    for output, (kind, data) in zip(cand.outputs.order_by("pk"), sources.items()):
        assert output.status == "done", (kind, output.error)
        assert OPAQUE.fullmatch(output.image.name) and OPAQUE.fullmatch(output.thumbnail.name), kind
        with output.image.open("rb") as fh:
            stored = fh.read()
        assert_bare_png(stored, like=data)  # the same pixels (as the source decodes), nothing else
        with output.thumbnail.open("rb") as fh:
            assert_bare_png(fh.read())
    assert len(_files(study.pk)) == 8 and not list((Path(settings.MEDIA_ROOT)).rglob("*.jp*g"))


def _jpeg_from_gpt_image(prompt: str) -> bytes:
    """What a hosted endpoint may return: a JPEG of the prompt's colour with EXIF, a comment and a
    C2PA segment naming the model."""
    from PIL import Image

    from tests.helpers.images import _c2pa_segment

    exif = Image.Exif()
    exif[0x0131] = f"{SECRET} image service"
    buf = io.BytesIO()
    colour = tuple(hashlib.sha256(prompt.encode()).digest()[:3])
    Image.new("RGB", (24, 16), colour).save(buf, format="JPEG", exif=exif.tobytes(), comment=SECRET.encode())
    return buf.getvalue()[:2] + _c2pa_segment(SECRET.encode()) + buf.getvalue()[2:]


class GptImageServer(FakeOpenAIServer):
    """The fake OpenAI server with its images route answering as OpenAI's gpt-image models do:
    400 "Unknown parameter" for ``response_format`` and for ``seed``, and the image as ``b64_json``
    without being asked (here a JPEG carrying metadata).  With ``urls=True`` it answers with a
    URL only, as DALL-E does when ``response_format`` is left out."""

    def __init__(self, *, urls: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.urls = urls

    def bind(self):
        httpd = super().bind()

        class Handler(httpd.RequestHandlerClass):
            def _answer_image(self, fake, number, body):
                for key in ("response_format", "seed"):
                    if key in body:
                        return 400, {"error": {"message": f"Unknown parameter: '{key}'.", "param": key,
                                               "type": "invalid_request_error", "code": "unknown_parameter"}}, {}
                if fake.urls:
                    return 200, {"created": 1, "data": [{"url": "https://files.example/img-1.png?sig=abc"}]}, {}
                data = base64.b64encode(_jpeg_from_gpt_image(body["prompt"])).decode()
                return 200, {"created": 1, "data": [{"b64_json": data, "revised_prompt": body["prompt"]}]}, {}

        httpd.RequestHandlerClass = Handler
        return httpd


@pytest.mark.django_db
def test_a_gpt_image_endpoint_works_once_the_spec_leaves_out_response_format_and_the_seed(
        evaluator, settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path / "media")
    study = _image_study(evaluator, samples=1, seed=40)
    with GptImageServer() as server:
        as_before = services.candidate_create(study=study, name="as-before", backend="openai_images", spec={
            "base_url": server.base_url, "model": "gpt-image-1", "width": 64, "height": 48})
        services.generation_start(study=study)
        assert _run(as_before, "run-1") == 2
        assert [o.status for o in as_before.outputs.all()] == ["failed"] * 2
        assert all("HTTP 400: Unknown parameter: 'response_format'." in o.error for o in as_before.outputs.all())
        assert [set(b) for b in server.bodies] == [{"model", "prompt", "n", "size", "response_format", "seed"}] * 2

        server.reset()
        bare = services.candidate_create(study=study, name="bare", backend="openai_images", spec={
            "base_url": server.base_url, "model": "gpt-image-1", "width": 64, "height": 48,
            "response_format": None, "send_seed": False, "extra_body": {"quality": "low"}})
        assert bare.spec["response_format"] is None and bare.spec["send_seed"] is False
        services.generation_start(study=study)
        assert _run(bare, "run-2") == 2
        bodies = sorted(server.bodies, key=lambda b: b["prompt"])
    assert bodies == [{"model": "gpt-image-1", "prompt": text, "n": 1, "size": "64x48", "quality": "low"}
                      for text in ("a red shoe on a summer sale banner", "people with coffee in the city at night")]
    for o in bare.outputs.select_related("prompt"):
        assert o.status == "done", o.error
        with o.image.open("rb") as fh:
            assert_bare_png(fh.read(), like=_jpeg_from_gpt_image(o.prompt.text))  # no EXIF, comment or C2PA
        assert o.image.name.endswith(".png")
        # the output keeps the seed it would have been sent (the same as the other candidate's)
        assert o.seed == 40 + o.prompt.position
        assert o.settings == {"backend": "openai_images", "model": "gpt-image-1", "width": 24, "height": 16,
                              "size_requested": "64x48", "seed_sent": False, "quality": "low",
                              "revised_prompt": o.prompt.text}


@pytest.mark.django_db
def test_an_endpoint_answering_with_urls_fails_the_output_saying_to_ask_for_b64_json(evaluator, settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path / "media")
    study = _image_study(evaluator, samples=1)
    with GptImageServer(urls=True) as server:
        cand = services.candidate_create(study=study, name="dall-e", backend="openai_images", spec={
            "base_url": server.base_url, "model": "dall-e-3", "response_format": None, "send_seed": False})
        services.generation_start(study=study)
        assert _run(cand, "run-1") == 2
    for o in cand.outputs.all():
        assert o.status == "failed" and not o.image
        assert o.error == ("the endpoint returned an image URL, not the image (response_format was null (not "
                           "sent)): set the spec's response_format to \"b64_json\"; Evalsite stores the image "
                           "bytes and does not fetch URLs")
        assert "sig=abc" not in o.error
    assert _files(study.pk) == []


@pytest.mark.django_db
def test_an_images_endpoint_candidate_is_queued_in_tasks_of_its_batch_size(evaluator, monkeypatch):
    study = _image_study(evaluator, samples=3)  # 2 prompts x 3 samples
    batches = []
    monkeypatch.setattr(services, "_enqueue_generation", lambda cand_id, ids: batches.append(len(ids)))
    services.candidate_create(study=study, name="hosted", backend="openai_images",
                              spec={"base_url": "http://127.0.0.1:9/v1", "model": "m", "batch_size": 4})
    assert services.generation_start(study=study) == 6
    assert batches == [4, 2]


@pytest.mark.django_db
def test_seeds_differ_by_prompt_and_sample_and_match_across_candidates_and_reruns(evaluator, settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path / "media")
    study = _image_study(evaluator, samples=2, seed=100)
    with FakeOpenAIServer() as server:
        first = services.candidate_create(study=study, name="first", backend="openai_images",
                                          spec={"base_url": server.base_url, "model": "m", "width": 16, "height": 16})
        services.generation_start(study=study)
        seeds = {(o.prompt.position, o.sample_index): o.seed for o in first.outputs.select_related("prompt")}
        assert seeds == {(0, 0): 100, (0, 1): 101, (1, 0): 102, (1, 1): 103}  # base + position * 2 + sample
        assert _run(first, "run-1") == 4
        sent = {(b["prompt"], b["seed"]) for b in server.bodies}
        assert len(sent) == 4 and {seed for _, seed in sent} == {100, 101, 102, 103}

        # a candidate added after the study's seed changed still gets the seeds the first one had
        study.generation_settings = {"seed": 7}
        study.save(update_fields=["generation_settings"])
        second = services.candidate_create(study=study, name="second", backend="openai_images",
                                           spec={"base_url": server.base_url, "model": "m2", "width": 16, "height": 16})
        services.generation_start(study=study)
        assert {(o.prompt.position, o.sample_index): o.seed for o in second.outputs.select_related("prompt")} == seeds

        # a failed output retried is generated again with its recorded seed: the same request, the same bytes
        victim = first.outputs.get(prompt__position=1, sample_index=0)
        with victim.image.open("rb") as fh:
            before = fh.read()
        type(victim).objects.filter(pk=victim.pk).update(status="failed", error="boom", image="", thumbnail="")
        server.reset()
        services.output_retry(output=victim)
        assert _run(first, "run-2") == 1
        assert [b["seed"] for b in server.bodies] == [102]
    victim.refresh_from_db()
    assert victim.status == "done" and victim.seed == 102
    with victim.image.open("rb") as fh:
        assert fh.read() == before


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
            assert o.settings["seed"] == o.seed == 3 + 2 * o.prompt.position + o.sample_index
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
