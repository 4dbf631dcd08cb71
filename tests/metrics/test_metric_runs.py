"""Metric runs: started by a service, computed by the task (in-process and in a real worker),
stored per output and per candidate and slice, and computed again only where something is missing.

The oracle for ROUGE-L is rouge-score's own ``RougeScorer(["rougeL"], use_stemmer=True)``
called directly here, one output at a time, and averaged by hand (Lin 2004, F-measure).
"""
from __future__ import annotations

import json
import math
from statistics import mean

import pytest
from django.db import transaction
from django.urls import reverse
from rouge_score import rouge_scorer

from annotation import services as annotation_services
from annotation.models import Output
from annotation.services import ServiceError
from arena.models import RatingSnapshot
from metrics import services
from metrics.models import CandidateScore, MetricRun, OutputScore
from metrics.tasks import compute_metric_run
from tests.conftest import client_for, imported_jsonl, wait_for

SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, reference: str) -> float:
    return SCORER.score(reference, prediction)["rougeL"].fmeasure  # score(target, prediction)


def expected_rouge_l(study, tag: str | None = None) -> dict[str, tuple[float, int]]:
    """Candidate name -> (mean ROUGE-L F1, n) over its finished outputs, computed by hand."""
    values: dict[str, list[float]] = {}
    for o in Output.objects.filter(study=study, status="done").select_related("prompt", "candidate"):
        if not o.prompt.reference or (tag and tag not in o.prompt.tags):
            continue
        values.setdefault(o.candidate.name, []).append(rouge_l(o.text, o.prompt.reference))
    return {name: (mean(v), len(v)) for name, v in values.items()}


def stored(run, slice_key="all") -> dict[str, tuple[float, int]]:
    return {s.candidate.name: (s.value, s.n)
            for s in CandidateScore.objects.filter(run=run, slice_key=slice_key).select_related("candidate")}


def end_state(run):
    run.refresh_from_db()
    return (
        (run.status, run.n_total, run.n_done, run.n_skipped, run.error, json.dumps(run.config, sort_keys=True)),
        sorted(OutputScore.objects.filter(run=run).values_list("pk", "output_id", "value")),
        sorted(CandidateScore.objects.filter(run=run).values_list("candidate_id", "slice_key", "value", "lower",
                                                                  "upper", "n")),
    )


def start(study, metric="rougeL", options=None):
    return services.metric_run_start(study=study, metric=metric, options=options or {}, actor=study.created_by)


@pytest.mark.django_db
def test_a_rouge_l_run_scores_each_candidate_as_rouge_score_does(study_factory, django_capture_on_commit_callbacks):
    study = study_factory()
    with django_capture_on_commit_callbacks() as sent:
        run = start(study)
    assert len(sent) == 1  # one task, sent when the transaction commits
    assert run.status == MetricRun.Status.QUEUED
    assert compute_metric_run(run.pk) == "done"
    run.refresh_from_db()
    assert (run.status, run.n_total, run.n_done, run.n_skipped) == ("done", 12, 12, 0)
    assert (run.config["library"], run.config["rouge_type"], run.config["use_stemmer"]) == ("rouge-score", "rougeL", True)
    assert run.config["better"] == "higher"
    got, want = stored(run), expected_rouge_l(study)
    assert set(got) == {"alpha-model", "beta-model", "gamma-model"}
    for name, (value, n) in want.items():
        assert got[name][1] == n == 4
        assert got[name][0] == pytest.approx(value, abs=1e-12)
    # per output too
    for score in OutputScore.objects.filter(run=run).select_related("output__prompt"):
        assert score.value == pytest.approx(rouge_l(score.output.text, score.output.prompt.reference), abs=1e-12)
    # slices: one per prompt tag (PROMPTS_CSV: account = p1, p4; billing = p3 ...)
    assert set(CandidateScore.objects.filter(run=run).values_list("slice_key", flat=True)) == {
        "all", "tag:account", "tag:easy", "tag:shipping", "tag:billing", "tag:hard"}
    for name, (value, n) in expected_rouge_l(study, "account").items():
        assert stored(run, "tag:account")[name] == (pytest.approx(value, abs=1e-12), n)
    for s in CandidateScore.objects.filter(run=run, slice_key="all"):
        assert s.lower <= s.value <= s.upper


@pytest.mark.django_db
def test_running_the_task_twice_or_starting_again_leaves_the_same_end_state(study_factory,
                                                                           django_capture_on_commit_callbacks):
    study = study_factory()
    run = start(study)
    compute_metric_run(run.pk)
    first = end_state(run)
    assert compute_metric_run(run.pk) == "not claimed"  # a second delivery finds nothing queued
    assert end_state(run) == first
    with django_capture_on_commit_callbacks() as sent:
        again = start(study)
    assert again.pk == run.pk and again.status == "queued" and len(sent) == 1
    compute_metric_run(run.pk)
    assert end_state(run) == first  # nothing new to score; the same intervals (seeded from the run)


@pytest.mark.django_db
def test_only_outputs_added_since_are_scored_when_the_metric_is_started_again(study_factory):
    study = study_factory()
    run = start(study)
    compute_metric_run(run.pk)
    before = dict(OutputScore.objects.filter(run=run).values_list("output_id", "pk"))
    annotation_services.prompts_import(study=study, data=b"id,prompt,reference,tags\np5,Do you ship abroad?,"
                                    b"We ship to the EU.,shipping\n", filename="more.csv")
    for cand in study.candidates.all():
        annotation_services.outputs_import(candidate=cand, data=imported_jsonl({"p5": f"{cand.name} ships to the EU"}),
                                           filename="o.jsonl")
    new = set(Output.objects.filter(study=study, prompt__external_id="p5").values_list("pk", flat=True))
    assert len(new) == 3
    start(study)
    compute_metric_run(run.pk)
    after = dict(OutputScore.objects.filter(run=run).values_list("output_id", "pk"))
    assert set(after) - set(before) == new
    assert {k: after[k] for k in before} == before  # the old rows were left alone
    run.refresh_from_db()
    assert (run.n_total, run.n_done) == (15, 15)
    for name, (value, n) in expected_rouge_l(study).items():
        assert stored(run)[name] == (pytest.approx(value, abs=1e-12), 5)
    for name, (value, n) in expected_rouge_l(study, "shipping").items():
        assert stored(run, "tag:shipping")[name] == (pytest.approx(value, abs=1e-12), 2)


@pytest.mark.django_db
def test_outputs_whose_prompt_has_no_reference_are_skipped_and_counted(study_factory):
    prompts = (b"id,prompt,reference,tags\np1,Reset?,Use the reset link.,a\np2,Order?,,a\n"
               b"p3,Refund?,Yes within 30 days.,b\n")
    study = study_factory(prompts=prompts)
    run = start(study, "token_f1")
    compute_metric_run(run.pk)
    run.refresh_from_db()
    assert (run.status, run.n_total, run.n_done, run.n_skipped) == ("done", 6, 6, 3)
    assert set(CandidateScore.objects.filter(run=run, slice_key="all").values_list("n", flat=True)) == {2}


@pytest.mark.django_db
def test_a_corpus_metric_is_computed_on_each_candidates_outputs(study_factory):
    import sacrebleu

    study = study_factory()
    run = start(study, "bleu")
    compute_metric_run(run.pk)
    for cand in study.candidates.all():
        outs = list(Output.objects.filter(candidate=cand).select_related("prompt").order_by("pk"))
        want = sacrebleu.corpus_bleu([o.text for o in outs], [[o.prompt.reference for o in outs]]).score
        s = CandidateScore.objects.get(run=run, candidate=cand, slice_key="all")
        assert (s.value, s.n) == (pytest.approx(want, abs=1e-9), 4)
    assert not OutputScore.objects.filter(run=run).exists()
    run.refresh_from_db()
    assert (run.config["library"], run.config["better"]) == ("sacrebleu", "higher")


@pytest.mark.django_db
def test_a_model_path_outside_the_model_roots_is_refused_naming_the_setting(study_factory):
    study = study_factory()
    with pytest.raises(ServiceError, match="EVALSITE_MODEL_ROOTS"):
        start(study, "bertscore", {"model": "/etc"})
    with pytest.raises(ServiceError, match="unknown metric"):
        start(study, "meteor")
    assert not MetricRun.objects.exists()


@pytest.mark.django_db
def test_a_run_with_a_directory_that_is_not_a_model_fails_readably_and_retry_queues_it_again(
        study_factory, tmp_path, django_capture_on_commit_callbacks):
    study = study_factory()
    fake = tmp_path / "not-a-model"  # inside the model roots (tests/conftest.py), but no model
    fake.mkdir()
    (fake / "config.json").write_text("{}")
    run = start(study, "bertscore", {"model": str(fake)})
    assert compute_metric_run(run.pk) == "failed"
    run.refresh_from_db()
    assert run.status == "failed" and run.finished_at is not None
    # e.g. "bertscore with the model /tmp/.../not-a-model failed: KeyError: 'num_hidden_layers'"
    assert run.error.startswith(f"bertscore with the model {fake} failed: ") and len(run.error) <= 500
    with django_capture_on_commit_callbacks() as sent:
        services.metric_run_retry(run=run)
    run.refresh_from_db()
    assert (run.status, run.error, len(sent)) == ("queued", "", 1)
    with pytest.raises(ServiceError, match="only a failed run"):
        services.metric_run_retry(run=run)


@pytest.mark.django_db
def test_heavy_metrics_go_to_the_generation_queue_and_light_ones_to_aggregation(settings):
    assert services.metric_queue("bertscore") == settings.QUEUE_GENERATION
    assert services.metric_queue("hallucination_rate") == settings.QUEUE_GENERATION
    assert services.metric_queue("rougeL") == settings.QUEUE_AGGREGATION
    assert services.metric_queue("bleu") == settings.QUEUE_AGGREGATION


# --- the page ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_page_shows_each_candidates_score_to_evaluators_and_managers_and_not_annotators(
        study_factory, evaluator, manager, annotators):
    study = study_factory()
    url = reverse("metrics:runs", args=[study.pk])
    ev = client_for(evaluator)
    assert ev.post(url, {"metric": "rougeL", "model": "", "threshold": ""}).status_code == 302
    run = MetricRun.objects.get(study=study, metric="rougeL")
    page = ev.get(url).content.decode()
    assert 'hx-trigger="every 2s"' in page and "queued" in page.lower()  # polls while queued
    compute_metric_run(run.pk)
    alpha = CandidateScore.objects.get(run=run, slice_key="all", candidate__name="alpha-model")
    page = ev.get(url).content.decode()
    assert 'hx-trigger="every 2s"' not in page
    assert f"{alpha.value:.4f}" in page and f"[{alpha.lower:.4f}, {alpha.upper:.4f}]" in page
    assert 'id="metric-start"' in page
    mpage = client_for(manager).get(url + "?slice=tag:account")
    assert mpage.status_code == 200 and 'id="metric-start"' not in mpage.content.decode()
    assert 'value="tag:account" selected' in mpage.content.decode()
    assert client_for(annotators[0]).get(url).status_code == 403
    assert client_for(manager).post(url, {"metric": "bleu"}).status_code == 403
    poll = ev.get(url + "?poll=1", HTTP_HX_REQUEST="true")
    assert poll.status_code == 286  # nothing queued or running: htmx stops polling
    assert ev.post(url, {"metric": "meteor"}).status_code == 400
    assert ev.post(url, {"metric": "bertscore", "model": "/etc"}).status_code == 409
    study_page = ev.get(reverse("annotation:study", args=[study.pk])).content.decode()
    assert url in study_page


@pytest.mark.django_db
def test_retry_through_the_page_queues_a_failed_run(study_factory, evaluator, annotators):
    study = study_factory()
    run = MetricRun.objects.create(study=study, metric="rougeL", options_hash="x", status="failed", error="boom")
    url = reverse("metrics:run_retry", args=[study.pk, run.pk])
    assert client_for(annotators[0]).post(url).status_code == 403
    assert client_for(evaluator).get(url).status_code == 405
    assert client_for(evaluator).post(url).status_code == 302
    run.refresh_from_db()
    assert run.status == "queued"
    assert client_for(evaluator).post(url).status_code == 409


# --- through a real worker --------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_run_through_the_worker_matches_rouge_score_and_a_second_run_changes_nothing(
        celery_worker_process, study_factory):
    study = study_factory()
    with transaction.atomic():
        run = start(study)
    wait_for(lambda: MetricRun.objects.get(pk=run.pk).status == "done", what="the metric run",
             worker=celery_worker_process)
    for name, (value, n) in expected_rouge_l(study).items():
        assert stored(run)[name] == (pytest.approx(value, abs=1e-12), n)
    # the finished run asked for a refresh: the worker puts it in the study summary
    wait_for(lambda: any(m["run"] == run.pk for m in (RatingSnapshot.objects.filter(
        study=study, method="summary").values_list("payload", flat=True).first() or {}).get("metrics", [])),
        what="the summary with the run", worker=celery_worker_process)
    first = end_state(run)
    with transaction.atomic():
        start(study)
    wait_for(lambda: MetricRun.objects.get(pk=run.pk).status == "done", what="the second run",
             worker=celery_worker_process)
    assert end_state(run) == first
    assert not math.isnan(first[2][0][2])


@pytest.mark.django_db
def test_a_run_left_running_past_the_task_time_limit_shows_retry_and_can_be_retried_from_the_page(
        study_factory, evaluator, manager, settings, django_capture_on_commit_callbacks):
    from datetime import timedelta

    from django.utils import timezone

    study = study_factory()
    limit = settings.EVALSITE_GENERATION_TIME_LIMIT
    stale = MetricRun.objects.create(study=study, metric="rougeL", options_hash="a", status="running",
                                     started_at=timezone.now() - timedelta(seconds=limit + 60))
    fresh = MetricRun.objects.create(study=study, metric="bleu", options_hash="b", status="running",
                                     started_at=timezone.now() - timedelta(seconds=limit - 60))
    url = reverse("metrics:runs", args=[study.pk])
    retry = {run.pk: reverse("metrics:run_retry", args=[study.pk, run.pk]) for run in (stale, fresh)}
    page = client_for(evaluator).get(url).content.decode()
    assert f'action="{retry[stale.pk]}"' in page and f'action="{retry[fresh.pk]}"' not in page
    assert page.count("Running for longer than the task time limit") == 1
    # the htmx fragment the page polls shows it too; a manager sees the warning but no button
    fragment = client_for(evaluator).get(url + "?poll=1", HTTP_HX_REQUEST="true").content.decode()
    assert f'action="{retry[stale.pk]}"' in fragment
    mpage = client_for(manager).get(url).content.decode()
    assert "Running for longer than the task time limit" in mpage and retry[stale.pk] not in mpage
    assert client_for(evaluator).post(retry[fresh.pk]).status_code == 409  # still within the limit
    with django_capture_on_commit_callbacks(execute=False) as sent:
        assert client_for(evaluator).post(retry[stale.pk]).status_code == 302
    assert len(sent) == 1
    stale.refresh_from_db()
    fresh.refresh_from_db()
    assert (stale.status, fresh.status) == ("queued", "running")
    page = client_for(evaluator).get(url).content.decode()
    assert retry[stale.pk] not in page and "Running for longer" not in page  # queued again: no button


@pytest.mark.django_db
def test_the_skipped_count_says_what_each_metric_skipped(study_factory, evaluator):
    study = study_factory()
    for metric, options, n in (("token_f1", {}, 3), ("clip_score", {"model": "w.pt"}, 4),
                               ("perplexity", {"model": "m"}, 5), ("nli", {"model": "m", "premise": "reference"}, 6),
                               ("nli", {"model": "m", "premise": "prompt"}, 7)):
        MetricRun.objects.create(study=study, metric=metric, options=options, options_hash=f"{metric}{n}",
                                 status="done", n_total=12, n_done=12, n_skipped=n)
    page = client_for(evaluator).get(reverse("metrics:runs", args=[study.pk])).content.decode()
    assert '<span class="run-skipped">3 skipped: their prompt has no reference</span>' in page
    assert '<span class="run-skipped">4 skipped: they have no image</span>' in page
    assert '<span class="run-skipped">5 skipped: they have no text</span>' in page
    assert '<span class="run-skipped">6 skipped: their prompt has no reference</span>' in page
    assert '<span class="run-skipped">7 skipped</span>' in page
    assert page.count("their prompt has no reference") == 2
