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


def test_the_banner_demo_has_tiny_clip_weights_that_a_clip_score_run_loads_offline(settings, tmp_path):
    import subprocess
    import sys

    from annotation.management.commands.load_demo import DEMO_CLIP_ARCHITECTURE
    from metrics import services as metric_services
    from metrics.models import CandidateScore, OutputScore
    from metrics.tasks import compute_metric_run

    settings.DEBUG = True
    settings.EVALSITE_MODELS_DIR = tmp_path / "models"
    call_command("load_demo", "--no-generate")
    weights = tmp_path / "models" / "tiny-clip" / "tiny-clip.pt"
    config = weights.parent / f"{DEMO_CLIP_ARCHITECTURE}.json"
    assert weights.is_file() and config.is_file() and weights.stat().st_size < 10_000_000
    built = (weights.stat().st_mtime_ns, config.stat().st_mtime_ns)
    call_command("load_demo", "--no-generate")  # a second run keeps the weights it built
    assert (weights.stat().st_mtime_ns, config.stat().st_mtime_ns) == built

    # a worker is another process: it loads the architecture from the config beside the weights
    script = ("import sys, numpy as np; from metrics.image import clip_embeddings; "
              "e = clip_embeddings(sys.argv[1], sys.argv[2], [np.zeros((32, 32, 3), np.uint8)], ['a banner']); "
              "print(e.images.shape, e.texts.shape)")
    done = subprocess.run([sys.executable, "-c", script, DEMO_CLIP_ARCHITECTURE, str(weights)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[-2] == "(1, 16) (1, 16)"

    # CLIP Score runs on the demo's generated images, as the README's demo paragraph says
    study = Study.objects.get(name=BANNER_STUDY_NAME)
    services.generation_start(study=study)
    candidate = study.candidates.order_by("name").first()
    ids = list(candidate.outputs.filter(prompt__external_id="bn-03").values_list("pk", flat=True))
    assert services.generation_run(candidate_id=candidate.pk, output_ids=ids, claim="demo") == 3
    run = metric_services.metric_run_start(study=study, metric="clip_score",
                                           options={"model": str(weights), "architecture": DEMO_CLIP_ARCHITECTURE})
    assert compute_metric_run(run.pk) == "done"
    assert sorted(OutputScore.objects.filter(run=run).values_list("output_id", flat=True)) == sorted(ids)
    assert CandidateScore.objects.get(run=run, candidate=candidate, slice_key="all").n == 3
    # FID and KID take the demo's reference set by its name (their runs are tested in tests/metrics)
    metric_services.metric_run_start(study=study, metric="fid", options={"reference": "real-banners"})
