"""The study summary page: numbers against independent computations, the recommendation, exports, roles."""
from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from django.urls import reverse
from django.utils import timezone
from scipy import stats

from annotation.models import Output
from arena.board import Board, BoardRow
from arena.models import RatingSnapshot
from metrics.models import CandidateScore, MetricRun, OutputScore, SummaryBudget
from tests.conftest import client_for

pytestmark = pytest.mark.django_db

# rating, lower, upper per candidate (as a worker's snapshot would hold them)
RATINGS = {"alpha-model": (1100.0, 1060.0, 1140.0), "beta-model": (1050.0, 1000.0, 1090.0),
           "gamma-model": (900.0, 850.0, 950.0)}
LATENCY = {"alpha-model": [100, 200, 300, 4000], "beta-model": [50, 60, 70, 80], "gamma-model": [10, 20, 30, 40]}
COST = {"alpha-model": 0.01, "beta-model": 0.002, "gamma-model": 0.001}


def _row(name, rank):
    r, lo, hi = RATINGS[name]
    return BoardRow(model=name, rating=r, lower=lo, upper=hi, median=r, rank=rank, battles=10, wins=5, losses=5,
                    ties=0, both_bad=0, win_rate=0.5, both_bad_rate=0.0)


@pytest.fixture
def study(study_factory):
    study = study_factory()
    for name, lat in LATENCY.items():
        for ms, out in zip(lat, Output.objects.filter(study=study, candidate__name=name).order_by("prompt_id")):
            Output.objects.filter(pk=out.pk).update(latency_ms=ms, cost=COST[name], completion_tokens=int(ms))
    board = Board(rounds=100, seed=0, n_battles=30, rows=tuple(_row(n, i + 1) for i, n in enumerate(RATINGS)))
    RatingSnapshot.objects.create(study=study, slice_key="all", method="bt", payload=board.to_json(),
                                  computed_at=timezone.now())
    run = MetricRun.objects.create(study=study, metric="rougeL", options_hash="x", status=MetricRun.Status.DONE)
    level = {"alpha-model": 0.3, "beta-model": 0.6, "gamma-model": 0.2}
    for out in Output.objects.filter(study=study).select_related("candidate"):
        OutputScore.objects.create(run=run, output=out, value=level[out.candidate.name] + 0.01 * out.prompt_id % 0.05)
    for cand in study.candidates.all():
        CandidateScore.objects.create(run=run, candidate=cand, slice_key="all", value=level[cand.name],
                                      lower=level[cand.name] - 0.05, upper=level[cand.name] + 0.05, n=4)
    return study


def _url(study, **q):
    base = reverse("metrics:summary", args=[study.pk])
    return base + ("?" + "&".join(f"{k}={v}" for k, v in q.items()) if q else "")


def test_the_table_matches_numpy_percentiles_and_the_snapshot(study, manager):
    data = client_for(manager).get(_url(study, format="json")).json()
    rows = {r["candidate"]: r for r in data["rows"]}
    for name, lat in LATENCY.items():
        p50, p95 = np.percentile(lat, [50, 95])
        assert rows[name]["latency_p50"] == pytest.approx(p50)
        assert rows[name]["latency_p95"] == pytest.approx(p95)
        assert rows[name]["tokens"] == pytest.approx(np.mean(lat))
        assert rows[name]["cost_per_1000"] == pytest.approx(COST[name] * 1000)
        assert (rows[name]["rating"], rows[name]["rating_lower"], rows[name]["rating_upper"]) == RATINGS[name]
    assert [r["candidate"] for r in data["rows"]] == ["alpha-model", "beta-model", "gamma-model"]  # best first
    assert rows["beta-model"]["metrics"][0]["value"] == pytest.approx(0.6)
    # system level: candidate means 0.3, 0.6, 0.2 (+ the same per-prompt offsets) vs ratings 1100, 1050, 900
    tau = stats.kendalltau([0.3, 0.6, 0.2], [1100, 1050, 900]).statistic
    assert data["agreement"][0]["kendall_tau"]["value"] == pytest.approx(tau)


def test_it_sorts_by_a_column(study, manager):
    data = client_for(manager).get(_url(study, format="json", sort="latency_p95")).json()
    assert [r["candidate"] for r in data["rows"]] == ["gamma-model", "beta-model", "alpha-model"]


def test_the_recommendation_keeps_to_the_budget_and_says_how_sure(study, evaluator):
    client = client_for(evaluator)
    data = client.get(_url(study, format="json")).json()
    # no budget: alpha (1060..1140) overlaps beta (1000..1090)
    assert data["recommendation"]["candidate"] == "alpha-model"
    assert data["recommendation"]["sentence"] == ("alpha-model has the best human rating within the budget, not "
                                                  "separable from beta-model: their rating intervals overlap.")
    response = client.post(_url(study), {"max_cost_per_1000": "5", "max_latency_p95_ms": ""})
    assert response.status_code == 302
    assert SummaryBudget.objects.get(study=study).max_cost_per_1000 == 5.0
    data = client.get(_url(study, format="json")).json()  # alpha costs 10 per 1,000: out
    assert data["recommendation"]["candidate"] == "beta-model"
    assert data["recommendation"]["separable"] is True
    assert "clearly ahead of gamma-model" in data["recommendation"]["sentence"]
    page = client.get(_url(study)).content.decode()
    assert "clearly ahead of gamma-model" in page and 'id="summary-budget"' in page


def test_no_ratings_yet(study, manager):
    RatingSnapshot.objects.filter(study=study).delete()
    page = client_for(manager).get(_url(study)).content.decode()
    assert "No ratings yet" in page and "no ratings yet" in page


def test_the_csv_export_guards_formulas(study, manager):
    study.candidates.filter(name="gamma-model").update(name="=HYPERLINK(1)")
    response = client_for(manager).get(_url(study, format="csv"))
    lines = list(csv.reader(io.StringIO(response.content.decode())))
    assert lines[0][:3] == ["candidate", "outputs", "rating"] and "rougeL_" in lines[0][5]
    names = [line[0] for line in lines[1:]]
    assert "'=HYPERLINK(1)" in names and "alpha-model" in names
    alpha = next(line for line in lines[1:] if line[0] == "alpha-model")
    assert float(alpha[2]) == 1100.0 and float(alpha[-1]) == pytest.approx(10.0)


def test_annotators_are_refused_and_managers_cannot_set_the_budget(study, annotators, manager):
    assert client_for(annotators[0]).get(_url(study)).status_code == 403
    assert client_for(manager).post(_url(study), {"max_cost_per_1000": "1"}).status_code == 403
    assert not SummaryBudget.objects.exists()


def test_the_query_count_does_not_grow_with_outputs(study, manager, django_assert_max_num_queries):
    client = client_for(manager)
    with django_assert_max_num_queries(25):
        assert client.get(_url(study)).status_code == 200
