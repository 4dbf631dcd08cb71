"""The agreement page: the worker's snapshot checked against krippendorff and sklearn computed
here from the judgments, who may read it, what it costs, and the worker's skip."""
from __future__ import annotations

import krippendorff
import numpy as np
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from sklearn.metrics import cohen_kappa_score

from annotation import checks, services
from annotation.models import Judgment, Unit
from arena.models import RatingSnapshot
from arena.services import ratings_refresh, ratings_request
from metrics.agreement_service import agreement_recompute
from tests.annotation import test_likert
from tests.annotation.test_likert import CRITERIA, TAGS
from tests.conftest import client_for

pytestmark = pytest.mark.django_db

PAGE_QUERIES = 12
likert_study = test_likert.likert_study  # the fixture


def _rule(n: int):
    """Annotator n's stored outcome for a unit: the three agree on most units, not all."""
    def choose(unit_id: int) -> str:
        base = "a" if unit_id % 2 else "b"
        if n == 1 and unit_id % 3 == 0:
            return "tie"
        if n == 2 and unit_id % 4 == 0:
            return "both_bad" if unit_id % 8 == 0 else ("b" if base == "a" else "a")
        return base
    return choose


def _vote(study, annotator, choose) -> int:
    """Vote on every unit the annotator is served with ``choose(unit id)`` (a stored outcome)."""
    n = 0
    while (a := services.assignment_next(study=study, annotator=annotator)) is not None:
        outcome = choose(a.unit_id)
        choice = ({"a": "left", "b": "right"} if a.left_is_a else {"a": "right", "b": "left"}).get(outcome, outcome)
        services.judgment_submit(assignment=a, choice=choice, rationale=f"reason {a.unit_id}")
        n += 1
    return n


def _refresh(study) -> None:
    """What the worker does after votes: the "all" slice (ratings, quality table), then the
    agreement figures it requests."""
    ratings_refresh(study_id=study.pk)
    ratings_refresh(study_id=study.pk, slice_key="agreement")


def _snapshot(study) -> dict:
    return RatingSnapshot.objects.get(study=study, slice_key="all", method="agreement").payload


def _matrix(triples, annotators, units) -> np.ndarray:
    """The reliability matrix (annotators x units, nan where missing), built by hand."""
    data = np.full((len(annotators), len(units)), np.nan)
    for a, u, v in triples:
        data[annotators.index(a), units.index(u)] = v
    return data


def _choice_triples(study, exclude=()) -> list[tuple[int, int, int]]:
    code = {"a": 0, "b": 1, "tie": 2, "both_bad": 3}
    return [(a, u, code[o]) for a, u, o in Judgment.objects.filter(study=study, unit__is_gold=False)
            .exclude(outcome="").exclude(annotator_id__in=exclude).values_list("annotator_id", "unit_id", "outcome")]


def _reference_alpha(triples, level: str, domain=None) -> float:
    people = sorted({t[0] for t in triples})
    units = sorted({t[1] for t in triples})
    return krippendorff.alpha(reliability_data=_matrix(triples, people, units), level_of_measurement=level,
                              value_domain=domain)


@pytest.fixture
def voted(study_factory, annotators):
    """Three annotators on every pair of a 3-candidate study (overlap 3), after attention checks
    that ann1 answers right and ann2 wrong; the worker's refresh has run."""
    study = study_factory(overlap=3)
    checks.checks_make_attention(study=study, count=6, seed=2)
    for annotator, right in ((annotators[0], True), (annotators[1], False)):
        while (a := services._lease_check(study, annotator, services.timezone.now())) is not None:
            better = Unit.objects.get(pk=a.unit_id).expected["better"]
            wants_left = (better == "a") == a.left_is_a
            services.judgment_submit(assignment=a, choice="left" if wants_left == right else "right")
    for n, annotator in enumerate(annotators):
        assert _vote(study, annotator, _rule(n)) == 12
    _refresh(study)
    return study


def test_the_pairwise_alpha_and_kappas_match_krippendorff_and_sklearn(voted, annotators):
    payload = _snapshot(voted)
    choice = payload["criteria"][0]
    assert choice["key"] == "choice" and choice["level"] == "nominal"
    triples = _choice_triples(voted)
    assert len(triples) == 36  # the checks' answers are left out
    expected = _reference_alpha(triples, "nominal")
    assert choice["alpha"] == pytest.approx(expected, abs=1e-6)
    assert choice["lower"] <= choice["alpha"] <= choice["upper"]
    assert (choice["units"], choice["annotators"], choice["pairable"]) == (12, 3, 36)
    assert choice["verdict"] == ("reliable" if expected >= 0.8 else "tentative" if expected >= 0.667
                                 else "not reliable")
    one, two = annotators[0].pk, annotators[1].pk
    mine = {u: v for a, u, v in triples if a == one}
    theirs = {u: v for a, u, v in triples if a == two}
    shared = sorted(mine.keys() & theirs.keys())
    kappa = next(k for k in choice["kappas"] if {k["a"], k["b"]} == {one, two})
    assert kappa["n"] == len(shared) == 12
    assert kappa["kappa"] == pytest.approx(cohen_kappa_score([mine[u] for u in shared], [theirs[u] for u in shared]),
                                           abs=1e-6)
    # leave one out: alpha without ann3 is the alpha of ann1 and ann2 alone
    rows = {r["user_id"]: r for r in payload["annotators"]}
    three = annotators[2].pk
    assert rows[three]["choice_alpha"][1] == pytest.approx(
        _reference_alpha([t for t in triples if t[0] != three], "nominal"), abs=1e-6)
    assert rows[three]["judgments"] == 12 and rows[one]["judgments"] == 12


def test_gold_accuracy_and_times_are_the_quality_tables(voted, annotators):
    quality = RatingSnapshot.objects.get(study=voted, method="quality").payload["annotators"]
    rows = {r["user_id"]: r for r in _snapshot(voted)["annotators"]}
    for user in annotators:
        q = quality[str(user.pk)]
        assert (rows[user.pk]["gold_right"], rows[user.pk]["gold_answered"]) == (q["gold_right"], q["gold_answered"])
        assert rows[user.pk]["median_seconds"] == pytest.approx(q["median_seconds"], abs=1e-6)
    assert (rows[annotators[0].pk]["gold_right"], rows[annotators[0].pk]["gold_answered"]) == (6, 6)
    assert (rows[annotators[1].pk]["gold_right"], rows[annotators[1].pk]["gold_answered"]) == (0, 6)
    assert any(f.startswith("Failing gold: 0/6") for f in rows[annotators[1].pk]["flags"])
    assert not any(f.startswith("Failing gold") for f in rows[annotators[0].pk]["flags"])


def test_an_excluded_annotator_is_left_out(voted, annotators, evaluator):
    services.member_exclude(study=voted, user=annotators[2], actor=evaluator)
    ratings_request(study_id=voted.pk)
    _refresh(voted)
    payload = _snapshot(voted)
    assert annotators[2].pk not in {r["user_id"] for r in payload["annotators"]}
    choice = payload["criteria"][0]
    triples = _choice_triples(voted, exclude=[annotators[2].pk])
    assert choice["annotators"] == 2 and choice["alpha"] == pytest.approx(_reference_alpha(triples, "nominal"),
                                                                          abs=1e-6)
    assert all(annotators[2].pk not in (k["a"], k["b"]) for k in choice["kappas"])


def test_the_ratings_follow_the_flags_of_a_new_agreement_snapshot(voted, annotators, evaluator):
    """In "leave flagged out" mode the ratings are refreshed again once the agreement figures flag
    someone (ann2 fails the checks), and leave them out."""
    from arena.models import RatingRequest
    from arena.services import ratings_mode_set

    RatingSnapshot.objects.filter(study=voted, method="agreement").delete()
    ratings_mode_set(study=voted, mode="exclude_flagged", actor=evaluator)
    ratings_refresh(study_id=voted.pk)
    board = RatingSnapshot.objects.get(study=voted, slice_key="all", method="bt").payload["ratings_mode"]
    assert annotators[1].pk not in board["left_out"]
    ratings_refresh(study_id=voted.pk, slice_key="agreement")
    assert RatingRequest.objects.get(study=voted, slice_key="all").pending
    ratings_refresh(study_id=voted.pk)
    board = RatingSnapshot.objects.get(study=voted, slice_key="all", method="bt").payload["ratings_mode"]
    assert annotators[1].pk in board["left_out"]
    ratings_refresh(study_id=voted.pk, slice_key="agreement")  # unchanged now: nothing more is requested
    assert not RatingRequest.objects.get(study=voted, slice_key="all").pending


def test_the_least_agreed_units_carry_their_judgments_side_by_side(voted, annotators):
    least = _snapshot(voted)["least_agreed"]
    assert 0 < len(least) <= 12
    uncertainty = [u["uncertainty"] for u in least]
    assert uncertainty == sorted(uncertainty, reverse=True)
    top = least[0]
    unit = Unit.objects.select_related("output_a__candidate", "output_b__candidate").get(pk=top["unit"])
    assert (top["a"], top["b"]) == (unit.output_a.candidate.name, unit.output_b.candidate.name)
    stored = dict(Judgment.objects.filter(unit=unit).values_list("annotator__username", "outcome"))
    assert {j["username"]: j["choice"] for j in top["judgments"]} == stored
    assert all(j["rationale"] == f"reason {unit.pk}" for j in top["judgments"])
    # a unit everyone agreed on is less uncertain than one they split on
    votes = {u["unit"]: len({j["choice"] for j in u["judgments"]}) for u in least}
    assert votes[top["unit"]] > 1


def test_the_likert_criteria_and_tags_match_krippendorff_at_their_levels(likert_study, annotators):
    study = likert_study(overlap=3, n_prompts=4)
    criteria = [CRITERIA[0], {**CRITERIA[1], "level": "interval"}]
    services.study_update_tasks(study=study, tasks={"task_kinds": "likert", "likert_criteria": criteria,
                                                    "failure_tags": TAGS, "ask_rationale": "optional"})
    for n, annotator in enumerate(annotators):
        while (a := services.assignment_next(study=study, annotator=annotator)) is not None:
            u = a.unit_id
            fact = None if (u + n) % 5 == 0 else 1 + (u + (n == 2)) % 3
            style = 1 + (u * 3 + n * (u % 2)) % 5
            tags = ["hallucination"] if (u + (n == 1)) % 3 == 0 else []
            services.judgment_submit(assignment=a, ratings={"factuality": fact, "style": style}, tags=tags)
    _refresh(study)
    payload = _snapshot(study)
    by_key = {c["key"]: c for c in payload["criteria"]}
    assert by_key["factuality"]["level"] == "ordinal" and by_key["style"]["level"] == "interval"
    rows = list(Judgment.objects.filter(study=study).values_list("annotator_id", "unit_id", "ratings", "tags"))
    assert len(rows) == 24
    fact = [(a, u, r["factuality"]) for a, u, r, _ in rows if r["factuality"] is not None]
    style = [(a, u, r["style"]) for a, u, r, _ in rows]
    tag = [(a, u, int("hallucination" in t)) for a, u, _, t in rows]
    assert by_key["factuality"]["alpha"] == pytest.approx(_reference_alpha(fact, "ordinal", [1, 2, 3]), abs=1e-6)
    assert by_key["style"]["alpha"] == pytest.approx(_reference_alpha(style, "interval"), abs=1e-6)
    assert by_key["tag:hallucination"]["alpha"] == pytest.approx(_reference_alpha(tag, "nominal"), abs=1e-6)
    # quadratic-weighted kappa on the ordinal criterion, for one pair
    one, two = annotators[0].pk, annotators[1].pk
    mine = {u: v for a, u, v in fact if a == one}
    theirs = {u: v for a, u, v in fact if a == two}
    shared = sorted(mine.keys() & theirs.keys())
    kappa = next(k for k in by_key["factuality"]["kappas"] if {k["a"], k["b"]} == {one, two})
    assert kappa["n"] == len(shared)
    assert kappa["kappa"] == pytest.approx(cohen_kappa_score([mine[u] for u in shared], [theirs[u] for u in shared],
                                                             weights="quadratic", labels=[1, 2, 3]), abs=1e-6)
    assert by_key["choice"]["units"] == 0 and by_key["choice"]["alpha"] is None


def test_a_bad_level_is_refused_naming_the_criterion(evaluator):
    with pytest.raises(services.ServiceError, match="likert_criteria 'style' level must be one of nominal, ordinal"):
        services.study_create(name="S", created_by=evaluator, prompts_data=b"id,prompt\nq1,Q?\n",
                              prompts_filename="p.csv",
                              tasks={"task_kinds": "likert", "likert_criteria": [{**CRITERIA[1], "level": "ratios"}]})


def test_managers_and_the_evaluator_read_it_and_annotators_may_not(voted, annotators, manager, evaluator):
    url = reverse("metrics:agreement", args=[voted.pk])
    page = client_for(evaluator).get(url)
    assert page.status_code == 200
    html = page.content.decode()
    assert "Pairwise choice" in html and "<svg" in html and "ann1" in html and "gamma-model" in html
    managed = client_for(manager).get(url)
    assert managed.status_code == 200
    assert "ann1" not in managed.content.decode() and "annotator-" in managed.content.decode()  # pseudonyms
    assert client_for(annotators[0]).get(url).status_code == 403
    data = client_for(evaluator).get(url + "?format=json").json()
    assert data["criteria"][0]["alpha"] == _snapshot(voted)["criteria"][0]["alpha"]
    assert {a["username"] for a in data["annotators"]} == {"ann1", "ann2", "ann3"}
    hidden = client_for(manager).get(url + "?format=json").json()
    text = str(hidden)
    assert "ann1" not in text and all("user_id" not in a for a in hidden["annotators"])
    assert {k["a"] for k in hidden["criteria"][0]["kappas"]} <= {a["name"] for a in hidden["annotators"]}
    study_page = client_for(evaluator).get(reverse("annotation:study", args=[voted.pk])).content.decode()
    assert url in study_page


def test_the_page_costs_the_same_whatever_the_study_holds(study_factory, annotators, manager):
    study = study_factory(overlap=3)
    _vote(study, annotators[0], _rule(0))
    _refresh(study)
    client = client_for(manager)
    url = reverse("metrics:agreement", args=[study.pk])
    client.get(url)  # the session is cached from here on
    counts = []
    for grow in (True, False):
        with CaptureQueriesContext(connection) as ctx:
            response = client.get(url)
        assert response.status_code == 200
        counts.append(len(ctx.captured_queries))
        if grow:  # three times the judgments, and now pairable ones
            _vote(study, annotators[1], _rule(1))
            _vote(study, annotators[2], _rule(2))
            _refresh(study)
    assert _snapshot(study)["n_judgments"] == 36
    assert counts[0] == counts[1] <= PAGE_QUERIES, counts


def test_the_worker_skips_unchanged_judgments_and_redoes_after_a_vote(study_factory, annotators):
    study = study_factory(overlap=3)
    _vote(study, annotators[0], _rule(0))
    _vote(study, annotators[1], _rule(1))
    first = agreement_recompute(study_id=study.pk)
    with CaptureQueriesContext(connection) as ctx:
        again = agreement_recompute(study_id=study.pk)
    assert len(ctx.captured_queries) <= 4  # study, snapshot, marker, the computed_at update
    assert again.payload == first.payload and again.computed_at >= first.computed_at
    _vote(study, annotators[2], _rule(2))
    after = agreement_recompute(study_id=study.pk)
    assert after.payload["computed_at"] != first.payload["computed_at"] and after.payload["n_judgments"] == 36
    assert after.payload["criteria"][0]["annotators"] == 3


@pytest.mark.django_db(transaction=True)
def test_a_worker_turns_votes_into_the_agreement_snapshot(celery_worker_process, study_factory, annotators, manager):
    from tests.conftest import wait_for

    study = study_factory(overlap=2, candidates=("alpha-model", "beta-model"))
    for n, annotator in enumerate(annotators[:2]):
        _vote(study, annotator, _rule(n))

    def computed():
        snap = RatingSnapshot.objects.filter(study=study, method="agreement").first()
        return snap is not None and snap.n_judgments == 8

    wait_for(computed, what="the agreement snapshot", worker=celery_worker_process)
    data = client_for(manager).get(reverse("metrics:agreement", args=[study.pk]) + "?format=json").json()
    triples = _choice_triples(study)
    assert data["criteria"][0]["alpha"] == pytest.approx(_reference_alpha(triples, "nominal"), abs=1e-6)
    assert data["criteria"][0]["units"] == 4 and len(data["annotators"]) == 2
