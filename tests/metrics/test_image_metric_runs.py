"""FID and KID runs per candidate against a reference set, equal to metrics.image called directly on
the same images; the reference set's features are computed once and reused."""
from __future__ import annotations

import io

import numpy as np
import pytest
from django.core.files.storage import default_storage

from annotation.models import Output
from annotation.services import ServiceError
from metrics import image, services
from metrics.image_runs import load_rgb
from metrics.models import CandidateScore, ReferenceSet
from metrics.references import reference_set_upload
from metrics.tasks import compute_metric_run
from tests.helpers.images import make_image_study, zip_of

pytestmark = pytest.mark.django_db


@pytest.fixture
def study(evaluator, annotators, manager):
    study = make_image_study(evaluator, annotators=annotators, managers=[manager], n_prompts=4, samples=1)
    rng = np.random.default_rng(3)
    members = {}
    for i in range(6):
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(buf, format="PNG")
        members[f"r{i}.png"] = buf.getvalue()
    reference_set_upload(study=study, name="real", upload=zip_of(members), actor=evaluator)
    return study


def test_options_are_checked_at_start_naming_the_option(study):
    with pytest.raises(ServiceError, match="reference: fid needs a reference set"):
        services.metric_run_start(study=study, metric="fid", options={})
    with pytest.raises(ServiceError, match="reference: no reference set 'nope'"):
        services.metric_run_start(study=study, metric="kid", options={"reference": "nope"})
    with pytest.raises(ServiceError, match="model: clip_score needs the path"):
        services.metric_run_start(study=study, metric="clip_score", options={})
    with pytest.raises(ServiceError, match="not inside a model root"):
        services.metric_run_start(study=study, metric="clip_score", options={"model": "/etc/passwd"})
    assert services.metric_queue("fid") == services.metric_queue("bertscore")


def test_fid_and_kid_per_candidate_equal_the_module_on_the_same_images(study, django_capture_on_commit_callbacks):
    ref = ReferenceSet.objects.get(study=study)
    fid_run = services.metric_run_start(study=study, metric="fid", options={"reference": "real", "rounds": 3})
    assert compute_metric_run(fid_run.pk) == "done"
    ref.refresh_from_db()
    assert ref.features and ref.features_config["weights_sha256"]
    cached_name, cached_mtime = ref.features.name, default_storage.get_modified_time(ref.features.name)
    ref_feats = image.inception_features([load_rgb(n) for n in ref.images.order_by("pk").values_list("file", flat=True)])
    fid_run.refresh_from_db()
    assert "FID is biased for small n" in fid_run.config["warning"] and fid_run.config["better"] == "lower"
    for score in CandidateScore.objects.filter(run=fid_run, slice_key="all"):
        names = list(Output.objects.filter(candidate_id=score.candidate_id).order_by("pk").values_list("image", flat=True))
        feats = image.inception_features([load_rgb(n) for n in names])
        direct = image.fid_from_features(feats, ref_feats, rng=np.random.default_rng(0), rounds=0)
        assert score.value == pytest.approx(direct.value, rel=1e-6)
        assert score.n == len(names) == 4 and score.lower <= score.upper
    kid_run = services.metric_run_start(study=study, metric="kid", options={"reference": "real", "subsets": 5})
    assert compute_metric_run(kid_run.pk) == "done"
    ref.refresh_from_db()
    assert ref.features.name == cached_name  # the cached features were read, not computed again
    assert default_storage.get_modified_time(ref.features.name) == cached_mtime
    for score in CandidateScore.objects.filter(run=kid_run, slice_key="all"):
        names = list(Output.objects.filter(candidate_id=score.candidate_id).order_by("pk").values_list("image", flat=True))
        feats = image.inception_features([load_rgb(n) for n in names])
        direct = image.kid(feats, ref_feats, subsets=5, subset_size=1000,
                           rng=services._rng(kid_run.pk, score.candidate_id, "all"))
        assert score.value == pytest.approx(direct.value, rel=1e-6)
        assert score.lower == pytest.approx(direct.lower, rel=1e-6)
    slices = set(CandidateScore.objects.filter(run=kid_run).values_list("slice_key", flat=True))
    assert "tag:people" in slices


@pytest.mark.parametrize("n_a,n_b,d", [(4, 6, 64), (12, 5, 40), (30, 50, 64)])
def test_the_small_n_fid_path_equals_the_covariance_formula(n_a, n_b, d):
    rng = np.random.default_rng(n_a * n_b)
    a, b = rng.standard_normal((n_a, d)), 1.3 * rng.standard_normal((n_b, d)) + 0.2
    fast = image.fid_from_features(a, b, rng=np.random.default_rng(0), rounds=0)
    general = image.frechet_distance(*image.gaussian_statistics(a), *image.gaussian_statistics(b))
    assert fast.value == pytest.approx(general, rel=1e-7)
    assert "exact, n < d" in fast.config["frechet"]


def test_clip_score_per_image_against_its_prompt_with_a_local_tiny_clip(study, tmp_path):
    import json

    import open_clip
    import torch

    from metrics.models import OutputScore
    from tests.metrics.test_image import TINY_CLIP

    (tmp_path / "evalsite-tiny-clip-run.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(tmp_path / "evalsite-tiny-clip-run.json")
    torch.manual_seed(1)
    weights = tmp_path / "tiny-clip.pt"
    torch.save(open_clip.create_model("evalsite-tiny-clip-run", pretrained=None).state_dict(), weights)
    with pytest.raises(ServiceError, match="model: no such weights file"):
        services.metric_run_start(study=study, metric="clip_score", options={"model": str(tmp_path / "missing.pt")})
    run = services.metric_run_start(study=study, metric="clip_score",
                                    options={"model": str(weights), "architecture": "evalsite-tiny-clip-run"})
    assert compute_metric_run(run.pk) == "done"
    outs = list(Output.objects.filter(study=study).select_related("prompt").order_by("pk"))
    emb = image.clip_embeddings("evalsite-tiny-clip-run", weights, [load_rgb(o.image.name) for o in outs],
                                [o.prompt.text for o in outs])
    direct = dict(zip([o.pk for o in outs], image.clip_score_per_item(emb.images, emb.texts)))
    got = dict(OutputScore.objects.filter(run=run).values_list("output_id", "value"))
    assert set(got) == set(direct)
    for pk, value in direct.items():
        assert got[pk] == pytest.approx(value, rel=1e-5, abs=1e-6)
    for score in CandidateScore.objects.filter(run=run, slice_key="all"):
        mine = [direct[o.pk] for o in outs if o.candidate_id == score.candidate_id]
        assert score.value == pytest.approx(np.mean(mine), rel=1e-5, abs=1e-6) and score.n == len(mine)
    run.refresh_from_db()
    assert run.config["weights_sha256"] and run.n_done == len(outs)


def test_inception_score_from_a_configured_local_classifier(study, tmp_path):
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(2)
    path = tmp_path / "tiny-classifier"
    config = ViTConfig(image_size=32, patch_size=16, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32, num_labels=5)
    ViTForImageClassification(config).save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    with pytest.raises(ServiceError, match="model: inception_score needs the path"):
        services.metric_run_start(study=study, metric="inception_score", options={})
    run = services.metric_run_start(study=study, metric="inception_score", options={"model": str(path), "splits": 2})
    assert compute_metric_run(run.pk) == "done"
    model = ViTForImageClassification.from_pretrained(path).eval()
    processor = ViTImageProcessor.from_pretrained(path)
    for score in CandidateScore.objects.filter(run=run, slice_key="all"):
        names = list(Output.objects.filter(candidate_id=score.candidate_id).order_by("pk").values_list("image", flat=True))
        with torch.inference_mode():
            logits = model(**processor(images=[load_rgb(n) for n in names], return_tensors="pt")).logits.numpy()
        direct = image.inception_score(logits.astype(np.float64), splits=2)
        assert score.value == pytest.approx(direct.value, rel=1e-5) and score.n == len(names)
        assert score.lower <= score.upper


def test_the_metrics_page_starts_fid_by_reference_name_and_shows_the_warning(study, evaluator,
                                                                              django_capture_on_commit_callbacks):
    from django.urls import reverse

    from metrics.models import MetricRun
    from tests.conftest import client_for

    url = reverse("metrics:runs", args=[study.pk])
    client = client_for(evaluator)
    bad = client.post(url, {"metric": "fid", "reference": "missing"})
    assert bad.status_code == 409 and "reference: no reference set" in bad.content.decode()
    with django_capture_on_commit_callbacks(execute=False) as sent:
        assert client.post(url, {"metric": "fid", "reference": "real"}).status_code == 302
    assert len(sent) == 1
    run = MetricRun.objects.get(study=study, metric="fid")
    assert run.options == {"reference": ReferenceSet.objects.get(study=study).pk, "rounds": 50}
    assert compute_metric_run(run.pk) == "done"
    page = client.get(url).content.decode()
    assert "FID is biased for small n" in page and "lower is better" in page and "against the reference set real" in page


def _add_candidate(study, name: str, colour: tuple[int, int, int]):
    from django.utils import timezone

    from annotation.models import Candidate
    from tests.helpers.images import image_output_save, png_bytes

    cand = Candidate.objects.create(study=study, name=name, backend=Candidate.Backend.IMPORTED, spec={})
    for k, prompt in enumerate(study.prompts.order_by("pk")):
        out = Output.objects.create(study=study, prompt=prompt, candidate=cand, sample_index=0, status=Output.Status.DONE,
                                    text="", finished_at=timezone.now(), seed=0, settings={})
        image_output_save(out, png_bytes(colour, mark=k + 1))
    return cand


@pytest.fixture
def counted(monkeypatch):
    """Every call of the Inception extractor: how many images, and the run's n_done when it came."""
    from metrics import image_runs
    from metrics.models import MetricRun

    monkeypatch.setattr(image_runs, "BATCH", 3)
    calls: list[tuple[int, list[int]]] = []
    real = image.inception_features

    def counting(images, **kwargs):
        images = list(images)
        calls.append((len(images), list(MetricRun.objects.values_list("n_done", flat=True))))
        return real(images, **kwargs)

    monkeypatch.setattr(image, "inception_features", counting)
    return calls


def test_features_stream_a_batch_at_a_time_and_are_never_extracted_twice(study, counted,
                                                                         django_capture_on_commit_callbacks):
    from metrics.models import MetricRun

    n_outputs = Output.objects.filter(study=study).count()
    fid_run = services.metric_run_start(study=study, metric="fid", options={"reference": "real", "rounds": 4})
    assert compute_metric_run(fid_run.pk) == "done"
    sizes = [n for n, _ in counted]
    assert max(sizes) <= 3  # one batch of decoded images at a time
    assert sum(sizes) == 6 + n_outputs  # the reference set's six, then each output image once
    # progress advanced per batch while the outputs were featurised, not set to the total beforehand
    seen = [done[0] for _, done in counted]
    assert seen[:2] == [0, 0]  # reference set first (two batches of three), nothing counted yet
    assert seen[2:] == list(range(0, n_outputs, 3))
    fid_run.refresh_from_db()
    assert fid_run.n_done == fid_run.n_total == n_outputs

    counted.clear()
    kid_run = services.metric_run_start(study=study, metric="kid", options={"reference": "real", "subsets": 5})
    assert compute_metric_run(kid_run.pk) == "done"
    assert counted == []  # a second set metric reads every feature from the caches
    assert CandidateScore.objects.filter(run=kid_run, slice_key="all").count() == 2

    # a candidate added later: rerunning FID featurises its four images only, and scores it
    new = _add_candidate(study, "gamma-model", (90, 90, 90))
    services.metric_run_start(study=study, metric="fid", options={"reference": "real", "rounds": 4})
    assert compute_metric_run(fid_run.pk) == "done"
    assert sum(n for n, _ in counted) == 4
    fid_run.refresh_from_db()
    assert fid_run.n_done == fid_run.n_total == n_outputs + 4
    score = CandidateScore.objects.get(run=fid_run, candidate=new, slice_key="all")
    names = list(Output.objects.filter(candidate=new).order_by("pk").values_list("image", flat=True))
    ref = ReferenceSet.objects.get(study=study)
    ref_feats = image.inception_features([load_rgb(n) for n in ref.images.order_by("pk").values_list("file", flat=True)])
    direct = image.fid_from_features(image.inception_features([load_rgb(n) for n in names]), ref_feats,
                                     rng=services._rng(fid_run.pk, new.pk, "all"), rounds=4)
    assert score.value == pytest.approx(direct.value, rel=1e-6)
    assert score.lower == pytest.approx(direct.lower, rel=1e-6) and score.upper == pytest.approx(direct.upper, rel=1e-6)
    assert score.lower <= score.value <= score.upper
    assert "jackknife" in MetricRun.objects.get(pk=fid_run.pk).config["interval"]


def test_a_lost_cache_file_is_computed_again(study, counted):
    from metrics import image_runs

    run = services.metric_run_start(study=study, metric="fid", options={"reference": "real", "rounds": 0})
    assert compute_metric_run(run.pk) == "done"
    before = dict(CandidateScore.objects.filter(run=run).values_list("candidate_id", "value"))
    name = Output.objects.filter(study=study).order_by("pk").values_list("image", flat=True).first()
    default_storage.delete(image_runs.feature_cache_name(study.pk, image_runs.inception_extractor(), name))
    counted.clear()
    services.metric_run_start(study=study, metric="fid", options={"reference": "real", "rounds": 0})
    assert compute_metric_run(run.pk) == "done"
    assert [n for n, _ in counted] == [1]
    assert dict(CandidateScore.objects.filter(run=run).values_list("candidate_id", "value")) == before


def test_the_clip_model_and_the_classifier_load_once_per_run(study, tmp_path, monkeypatch):
    import json

    import open_clip
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    from metrics import image_runs
    from tests.metrics.test_image import TINY_CLIP

    monkeypatch.setattr(image_runs, "BATCH", 3)
    (tmp_path / "evalsite-tiny-clip-once.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(tmp_path / "evalsite-tiny-clip-once.json")
    weights = tmp_path / "tiny-clip.pt"
    torch.save(open_clip.create_model("evalsite-tiny-clip-once", pretrained=None).state_dict(), weights)
    loads = {"clip": 0, "classifier": 0}
    real_clip, real_classifier = image.clip_model, image_runs._load_classifier

    def clip_model(*args, **kwargs):
        loads["clip"] += 1
        return real_clip(*args, **kwargs)

    def load_classifier(path):
        loads["classifier"] += 1
        return real_classifier(path)

    monkeypatch.setattr(image, "clip_model", clip_model)
    monkeypatch.setattr(image_runs, "_load_classifier", load_classifier)
    run = services.metric_run_start(study=study, metric="clip_score",
                                    options={"model": str(weights), "architecture": "evalsite-tiny-clip-once"})
    assert compute_metric_run(run.pk) == "done"
    run.refresh_from_db()
    assert run.n_done == Output.objects.filter(study=study).count() == 8 and loads["clip"] == 1  # 3 batches

    path = tmp_path / "tiny-classifier"
    ViTForImageClassification(ViTConfig(image_size=32, patch_size=16, hidden_size=16, num_hidden_layers=1,
                                        num_attention_heads=2, intermediate_size=32, num_labels=5)).save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    is_run = services.metric_run_start(study=study, metric="inception_score", options={"model": str(path), "splits": 2})
    assert compute_metric_run(is_run.pk) == "done"
    assert loads["classifier"] == 1
    services.metric_run_start(study=study, metric="inception_score", options={"model": str(path), "splits": 2})
    assert compute_metric_run(is_run.pk) == "done"
    assert loads["classifier"] == 1  # the logits were cached: nothing to load the model for


@pytest.fixture
def tiny_clip(tmp_path):
    """A local open_clip weights file of a tiny random architecture, and that architecture's name."""
    import json

    import open_clip
    import torch

    from tests.metrics.test_image import TINY_CLIP

    (tmp_path / "evalsite-tiny-clip-retrieval.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(tmp_path / "evalsite-tiny-clip-retrieval.json")
    torch.manual_seed(4)
    weights = tmp_path / "tiny-clip.pt"
    torch.save(open_clip.create_model("evalsite-tiny-clip-retrieval", pretrained=None).state_dict(), weights)
    return str(weights), "evalsite-tiny-clip-retrieval"


def _direct_retrieval(study, weights: str, arch: str, k: int) -> tuple[dict, dict, list]:
    """recall_at_k called directly on embeddings from metrics.image (no cache, no run): per output
    its image→text hit, per candidate the two results."""
    from annotation.models import Prompt
    from metrics.multimodal import recall_at_k

    outs = list(Output.objects.filter(study=study).order_by("pk"))
    prompts = list(Prompt.objects.filter(study=study).order_by("pk"))
    emb = image.clip_embeddings(arch, weights, [load_rgb(o.image.name) for o in outs], [p.text for p in prompts])
    column = {p.pk: j for j, p in enumerate(prompts)}
    per_output, per_candidate = {}, {}
    for cand in sorted({o.candidate_id for o in outs}):
        idx = [i for i, o in enumerate(outs) if o.candidate_id == cand]
        res = recall_at_k(emb.images[idx] @ emb.texts.T, [[column[outs[i].prompt_id]] for i in idx], k,
                          rng=services._rng(0, cand))
        per_candidate[cand] = res
        per_output.update({outs[i].pk: hit for i, hit in zip(idx, res["image_to_text"].per_item)})
    return per_output, per_candidate, prompts


@pytest.mark.parametrize("k", [1, 2])
def test_clip_retrieval_equals_recall_at_k_on_the_same_embeddings(study, tiny_clip, k):
    from metrics.models import MetricRun, OutputScore

    weights, arch = tiny_clip
    run = services.metric_run_start(study=study, metric="clip_retrieval",
                                    options={"model": weights, "architecture": arch, "k": k})
    assert services.metric_queue("clip_retrieval") == services.metric_queue("clip_score")
    assert compute_metric_run(run.pk) == "done"
    per_output, per_candidate, prompts = _direct_retrieval(study, weights, arch, k)
    got = dict(OutputScore.objects.filter(run=run).values_list("output_id", "value"))
    assert got == per_output and set(got.values()) <= {0.0, 1.0}
    run.refresh_from_db()
    names = dict(study.candidates.values_list("pk", "name"))
    for score in CandidateScore.objects.filter(run=run, slice_key="all"):
        direct = per_candidate[score.candidate_id]
        assert score.value == pytest.approx(direct["image_to_text"].value) and score.n == 4
        t2i = run.config["text_to_image"]["per_candidate"][names[score.candidate_id]]
        assert t2i["recall"] == pytest.approx(direct["text_to_image"].value)
        assert t2i["prompts"] == direct["text_to_image"].n == 4 and t2i["images"] == 4
        assert t2i["lower"] <= t2i["recall"] <= t2i["upper"]
    assert CandidateScore.objects.filter(run=run, slice_key="tag:people").exists()  # slices work as for clip_score
    assert run.config["k"] == k and run.config["n_prompts"] == len(prompts) == 4
    assert run.config["model"] == weights and run.config["architecture"] == arch
    assert f"image→text recall@{k}" in run.config["definition"] and "its own prompt" in run.config["definition"]
    assert "any positive is within the top K" in run.config["recall"]
    assert run.config["better"] == "higher" and run.config["weights_sha256"]
    assert run.n_done == run.n_total == 8 and run.status == MetricRun.Status.DONE


def test_a_clip_retrieval_rerun_reads_the_cached_embeddings_and_ends_in_the_same_state(study, tiny_clip, monkeypatch):
    from metrics.models import OutputScore

    weights, arch = tiny_clip
    options = {"model": weights, "architecture": arch}
    run = services.metric_run_start(study=study, metric="clip_retrieval", options=options)
    assert run.options["k"] == 1  # the default, so k left out and k = 1 are the same run
    assert compute_metric_run(run.pk) == "done"
    before = (sorted(OutputScore.objects.filter(run=run).values_list("output_id", "value")),
              sorted(CandidateScore.objects.filter(run=run).values_list("candidate_id", "slice_key", "value")))
    embedded: list[int] = []
    real = image.clip_embed

    def counting(clip, images, texts, **kwargs):
        embedded.append(len(images))
        return real(clip, images, texts, **kwargs)

    monkeypatch.setattr(image, "clip_embed", counting)
    assert services.metric_run_start(study=study, metric="clip_retrieval", options={**options, "k": 1}).pk == run.pk
    assert compute_metric_run(run.pk) == "done"
    assert sum(embedded) == 0  # only the prompts' texts were embedded again
    after = (sorted(OutputScore.objects.filter(run=run).values_list("output_id", "value")),
             sorted(CandidateScore.objects.filter(run=run).values_list("candidate_id", "slice_key", "value")))
    assert after == before


def test_a_bad_k_is_refused_naming_k(study, tiny_clip):
    weights, arch = tiny_clip
    for bad in (0, 5, -1, "2", 1.5, True):
        with pytest.raises(ServiceError, match=r"^k: a whole number from 1 to 4 \(the number of prompts in this study\)"):
            services.metric_run_start(study=study, metric="clip_retrieval",
                                      options={"model": weights, "architecture": arch, "k": bad})
    with pytest.raises(ServiceError, match="clip_retrieval takes no rounds"):
        services.metric_run_start(study=study, metric="clip_retrieval", options={"model": weights, "rounds": 3})
    with pytest.raises(ServiceError, match="model: clip_retrieval needs the path"):
        services.metric_run_start(study=study, metric="clip_retrieval", options={"k": 1})
    with pytest.raises(ServiceError, match="architecture: an open_clip model name"):
        services.metric_run_start(study=study, metric="clip_retrieval",
                                  options={"model": weights, "architecture": "hf-hub:x/y"})


def test_the_metrics_page_starts_clip_retrieval_with_its_k_or_names_a_bad_one(study, tiny_clip, evaluator):
    from django.urls import reverse

    from metrics.models import MetricRun
    from tests.conftest import client_for

    weights, arch = tiny_clip
    client, url = client_for(evaluator), reverse("metrics:runs", args=[study.pk])
    form = {"metric": "clip_retrieval", "model": weights, "architecture": arch}
    bad = client.post(url, {**form, "k": "9"})
    assert bad.status_code == 409 and "k: a whole number from 1 to 4" in bad.content.decode()  # as other refused options
    assert not MetricRun.objects.filter(study=study, metric="clip_retrieval").exists()
    assert client.post(url, {**form, "k": "2"}).status_code == 302
    assert MetricRun.objects.get(study=study, metric="clip_retrieval").options["k"] == 2
    assert 'name="k"' in client.get(url).content.decode()


def test_the_summary_shows_clip_retrieval_as_a_metric_column(study, tiny_clip, manager):
    from django.urls import reverse

    from metrics.summary import summary_recompute
    from tests.conftest import client_for

    weights, arch = tiny_clip
    run = services.metric_run_start(study=study, metric="clip_retrieval",
                                    options={"model": weights, "architecture": arch, "k": 2})
    assert compute_metric_run(run.pk) == "done"
    summary_recompute(study_id=study.pk)
    data = client_for(manager).get(reverse("metrics:summary", args=[study.pk]) + "?format=json").json()
    column = next(m for m in data["metrics"] if m["run"] == run.pk)
    assert column["name"] == "clip_retrieval" and column["better"] == "higher"
    assert column["label"] == f"clip_retrieval (tiny-clip.pt, architecture {arch}, k 2)"
    assert column["config"]["k"] == 2 and "text_to_image" in column["config"]
    expected = {s.candidate.name: s.value for s in CandidateScore.objects.filter(run=run, slice_key="all")
                .select_related("candidate")}
    shown = {r["candidate"]: next(m["value"] for m in r["metrics"] if m["key"] == column["key"]) for r in data["rows"]}
    assert shown == pytest.approx(expected)
    page = client_for(manager).get(reverse("metrics:summary", args=[study.pk])).content.decode()
    assert f"clip_retrieval (tiny-clip.pt, architecture {arch}, k 2)" in page
