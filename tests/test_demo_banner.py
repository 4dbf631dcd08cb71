"""The second demo study, "Banner concepts": text to image on two tiny diffusers pipelines,
with a generated reference set, loaded by `make run` (load_demo) and runnable offline."""
import pytest
from django.core.management import call_command

from annotation import services
from annotation.demo_data import BANNER_PIPELINES, BANNER_REFERENCE_IMAGES, BANNER_STUDY_NAME
from annotation.models import Output, Study
from metrics.models import ReferenceSet

pytestmark = pytest.mark.django_db


def test_load_demo_adds_the_banner_study_and_its_images_generate_offline(settings, tmp_path):
    settings.DEBUG = True
    settings.EVALSITE_MODELS_DIR = tmp_path / "models"  # inside the tests' model root
    call_command("load_demo", "--no-generate")
    call_command("load_demo", "--no-generate")  # a second run reuses what is there
    study = Study.objects.get(name=BANNER_STUDY_NAME)
    assert study.samples_per_prompt == 3 and study.prompts.count() == 12
    assert [c["key"] for c in study.likert_criteria] == ["relevance", "creativity", "style"]
    assert {t["key"] for t in study.failure_tags} >= {"hands", "text_rendering", "off_prompt"}
    assert sorted(study.candidates.values_list("name", "backend")) == [(n, "diffusers") for n, _ in BANNER_PIPELINES]
    [refs] = ReferenceSet.objects.filter(study=study)
    assert refs.name == "real-banners" and refs.n_images == BANNER_REFERENCE_IMAGES
    assert services.generation_start(study=study) == 12 * 3 * 2  # what `make run` queues for its worker
    # one brief's three samples of one candidate, generated here in-process (the worker's code path)
    candidate = study.candidates.order_by("name").first()
    outputs = list(candidate.outputs.filter(prompt__external_id="bn-03").order_by("sample_index"))
    written = services.generation_run(candidate_id=candidate.pk, output_ids=[o.pk for o in outputs], claim="demo")
    assert written == 3
    done = list(Output.objects.filter(pk__in=[o.pk for o in outputs]).order_by("sample_index"))
    assert all(o.status == Output.Status.DONE and o.image and o.thumbnail for o in done), [o.error for o in done]
    assert len({o.image.read() for o in done}) == 3  # a seed per sample: three different images
    assert all(candidate.name not in o.image.name for o in done)
