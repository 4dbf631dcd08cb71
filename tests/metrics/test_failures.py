"""The failure-analysis page: prompt intent × failure tag matrix and per-candidate rates with Wilson
intervals (checked against counts made here and statsmodels), the gallery's filters, and roles."""
from __future__ import annotations

import itertools

import pytest
from django.urls import reverse
from statsmodels.stats.proportion import proportion_confint

from annotation import services
from annotation.models import Judgment, PromptTag
from metrics.failures import ANY
from metrics.summary import summary_recompute
from tests.conftest import client_for
from tests.helpers.images import make_image_study

pytestmark = pytest.mark.django_db
TAG_CYCLE = ([], ["hands"], ["hands", "text_rendering"], ["artifacts"], [])


@pytest.fixture
def rated(evaluator, annotators, manager):
    study = make_image_study(evaluator, annotators=annotators, managers=[manager], task_kinds="likert",
                             n_prompts=8, overlap=2)
    cycle = itertools.cycle(TAG_CYCLE)
    for annotator in annotators[:2]:
        while (a := services.assignment_next(study=study, annotator=annotator)) is not None:
            tags = ["hands"] if a.unit.output_a.candidate.name == "alpha-model" and a.unit.prompt_id % 2 else next(cycle)
            services.judgment_submit(assignment=a, ratings={"relevance": 3, "creativity": 4}, tags=tags)
    summary_recompute(study_id=study.pk, force=True)
    return study


def _recount(study):
    rows = [(j.unit.output_a.candidate.name, j.unit.prompt_id, set(j.tags or []), j.unit.output_a_id)
            for j in Judgment.objects.filter(study=study, ratings__isnull=False).select_related("unit__output_a__candidate")]
    intents = {}
    for p, t in PromptTag.objects.filter(study=study).values_list("prompt_id", "tag"):
        intents.setdefault(p, set()).add(t)
    return rows, intents


def _effective_n(hit: list[bool], clusters: list[int]) -> float:
    """n / design effect, written out here apart from metrics.likert: the ratio of the share's
    linearisation variance with outputs as clusters to its variance with independent judgments."""
    n = len(hit)
    p = sum(hit) / n
    groups: dict[int, list[bool]] = {}
    for h, o in zip(hit, clusters):
        groups.setdefault(o, []).append(h)
    if p in (0, 1):
        return float(len(groups))
    c = len(groups)
    var_cluster = c / (c - 1) * sum((sum(g) - p * len(g)) ** 2 for g in groups.values()) / n ** 2
    var_independent = p * (1 - p) / (n - 1)
    return n / max(1.0, var_cluster / var_independent)


def test_matrix_and_rates_equal_a_recount_with_wilson_intervals(rated, manager):
    rows, intents = _recount(rated)
    assert len(rows) >= 16 and any(t for _, _, t, _ in rows)
    data = client_for(manager).get(reverse("metrics:summary", args=[rated.pk]) + "?format=json").json()
    fig = data["failures"]
    assert fig["n_rated"] == len(rows)
    matrix = {r["intent"]: r for r in fig["matrix"]}
    for intent in {t for ts in intents.values() for t in ts}:
        chosen = [t for _, p, t, _ in rows if intent in intents.get(p, set())]
        row = matrix[intent]
        assert row["n"] == len(chosen)
        for cell in row["cells"]:
            expected = sum(1 for t in chosen if (t if cell["tag"] == ANY else cell["tag"] in t))
            assert cell["count"] == expected and cell["rate"] == pytest.approx(expected / len(chosen))
    for cand in fig["candidates"]:
        mine = [(t, o) for c, _, t, o in rows if c == cand["candidate"]]
        for rate in cand["rates"]:
            hit = [(rate["tag"] == ANY and bool(t)) or rate["tag"] in t for t, _ in mine]
            k = sum(hit)
            # each output is rated twice: Wilson on the effective n (Korn and Graubard), recounted here
            n_eff = _effective_n(hit, [o for _, o in mine])
            lo, hi = proportion_confint(k / len(mine) * n_eff, n_eff, alpha=0.05, method="wilson")
            assert (rate["n"], rate["of"]) == (k, len(mine))
            assert rate["lower"] == pytest.approx(lo, abs=1e-9) and rate["upper"] == pytest.approx(hi, abs=1e-9)
    # the summary row carries the any-failure rate and seconds per image (helper latencies: 1.0 s, 1.1 s)
    by_name = {r["candidate"]: r for r in data["rows"]}
    alpha = next(c for c in fig["candidates"] if c["candidate"] == "alpha-model")
    assert by_name["alpha-model"]["failure_rate"] == pytest.approx(alpha["rates"][-1]["share"])
    assert by_name["alpha-model"]["seconds_per_image"] == pytest.approx(1.0)
    assert by_name["beta-model"]["seconds_per_image"] == pytest.approx(1.1)


def test_gallery_filters_by_tag_and_candidate(rated, evaluator):
    rows = Judgment.objects.filter(study=rated, ratings__isnull=False).select_related("unit__output_a__candidate")
    url = reverse("metrics:failures", args=[rated.pk])
    client = client_for(evaluator)
    for tag, cand in (("hands", ""), ("artifacts", ""), ("hands", "beta-model"), ("", "alpha-model")):
        expected = {j.unit.output_a_id for j in rows if (tag in (j.tags or []) if tag else j.tags)
                    and (not cand or j.unit.output_a.candidate.name == cand)}
        page = client.get(url, {"tag": tag, "candidate": cand}).content.decode()
        shown = {int(x.split('"')[0]) for x in page.split('data-output="')[1:]}
        assert shown == expected, (tag, cand)
    page = client.get(url, {"tag": "hands"}).content.decode()
    assert "/images/thumbs/" in page and 'id="failure-matrix"' in page
    # an unknown candidate (a NUL character among them: PostgreSQL refuses it in a query) is named, not a 500
    for bad in ("gamma-model", "a\x00b"):
        response = client.get(url, {"candidate": bad})
        assert response.status_code == 400 and 'id="failures-error"' in response.content.decode()
        assert "no candidate named" in response.content.decode()


def test_roles(rated, evaluator, manager, annotators):
    url = reverse("metrics:failures", args=[rated.pk])
    assert client_for(evaluator).get(url).status_code == 200
    assert client_for(manager).get(url).status_code == 200
    assert client_for(annotators[0]).get(url).status_code == 403


def test_the_page_costs_the_same_whatever_the_study_holds(rated, evaluator, annotators, manager):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client = client_for(evaluator)

    def cost(study) -> tuple[int, int]:
        url, counts = reverse("metrics:failures", args=[study.pk]), []
        for params in ({}, {"tag": "hands", "candidate": "alpha-model"}):
            with CaptureQueriesContext(connection) as queries:
                assert client.get(url, params).status_code == 200
            counts.append(len(queries))
        return tuple(counts)

    # three times the prompts, three raters each, every output tagged: a bigger matrix and gallery
    big = make_image_study(evaluator, annotators=annotators, managers=[manager], task_kinds="likert",
                           n_prompts=24, overlap=3)
    for annotator in annotators[:3]:
        while (a := services.assignment_next(study=big, annotator=annotator)) is not None:
            services.judgment_submit(assignment=a, ratings={"relevance": 1, "creativity": 2},
                                     tags=["hands", "artifacts"])
    summary_recompute(study_id=big.pk, force=True)
    n_small = Judgment.objects.filter(study=rated, ratings__isnull=False).count()
    assert Judgment.objects.filter(study=big, ratings__isnull=False).count() > 4 * n_small
    assert cost(big) == cost(rated), cost(rated)
