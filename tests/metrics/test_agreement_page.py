"""The agreement page: the worker's snapshot checked against krippendorff and sklearn computed
here from the judgments, who may read it, what it costs, and the worker's skip."""
from __future__ import annotations

import re
from collections import Counter

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
    return {**RatingSnapshot.objects.get(study=study, slice_key="all", method="agreement").payload,
            "_study": study.pk}


def _kappas(payload, key: str = "choice") -> list[dict]:
    """A criterion's stored kappas ([a, b, shared units, kappa, percent] each, in a row of their own
    beside the snapshot ``payload``) as dicts."""
    stored = RatingSnapshot.objects.get(study_id=payload["_study"], method="agreement_kappas",
                                        slice_key=f"kappas:{key}").payload
    assert stored["criterion"] == key
    return [dict(zip(("a", "b", "n", "kappa", "percent"), k)) for k in stored["pairs"]]


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
    kappa = next(k for k in _kappas(payload) if {k["a"], k["b"]} == {one, two})
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
    assert all(annotators[2].pk not in (k["a"], k["b"]) for k in _kappas(payload))


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
    kappa = next(k for k in _kappas(payload, "factuality") if {k["a"], k["b"]} == {one, two})
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


# --- Likert-only studies, least-agreed units, shortened scales, Fleiss, flags -----------------------


def _rate_all(study, annotators, rule) -> None:
    """Every annotator rates every Likert unit they are served with ``rule(n, unit id)`` -> ratings."""
    for n, annotator in enumerate(annotators):
        while (a := services.assignment_next(study=study, annotator=annotator)) is not None:
            services.judgment_submit(assignment=a, ratings=rule(n, a.unit_id), rationale=f"why {a.unit_id}")


def _split_rule(n: int, u: int) -> dict:
    """ann1 and ann2 mostly agree; ann3 answers against the unit id; style splits on some units."""
    fact = 1 + u % 3 if n < 2 else 1 + (u + 1) % 3
    style = 1 + (u + (n == 1 and u % 2)) % 5
    return {"factuality": fact, "style": style}


def test_a_likert_only_study_gets_competence_least_agreed_units_and_weights(likert_study, annotators, evaluator):
    from arena.modes import competence_weights, mode_info
    from arena.services import ratings_mode_set

    study = likert_study(overlap=3, n_prompts=6)
    _rate_all(study, annotators, _split_rule)
    _refresh(study)
    payload = _snapshot(study)
    assert "Competence needs" not in payload["competence_note"]
    assert payload["competence_from"] == ["Factuality", "Style consistency"]
    rows = {r["user_id"]: r for r in payload["annotators"]}
    for user in annotators:
        row = rows[user.pk]
        assert row["competence_n"] == 2 and set(row["competence_by"]) == {"factuality", "style"}
        # the annotator's competence is the mean of their Dawid-Skene skills over the two criteria
        assert row["competence"] == pytest.approx(sum(row["competence_by"].values()) / 2, abs=1e-6)
        assert 0 <= row["mace"] <= 1
    # the odd one out (ann3 answers factuality against the others) has the lowest competence
    assert min(rows, key=lambda u: rows[u]["competence"]) == annotators[2].pk
    least = payload["least_agreed"]
    assert least and all(u["kind"] == "likert" and u["b"] is None for u in least)
    assert all(len(u["judgments"]) >= 2 for u in least)
    assert all(u["criterion"] in ("factuality", "style") for u in least)
    shares = [u["uncertainty_share"] for u in least]
    assert shares == sorted(shares, reverse=True)
    top = least[0]
    stored = {j.annotator.username: j.ratings for j in Judgment.objects.filter(unit_id=top["unit"])
              .select_related("annotator")}
    assert {j["username"]: j["choice_words"] for j in top["judgments"]} == {
        name: f"Factuality {r['factuality']} · Style consistency {r['style']}" for name, r in stored.items()}
    # the competence ratings mode weighs by these figures
    assert competence_weights(study.pk) == {u: rows[u]["competence"] for u in rows}
    ratings_mode_set(study=study, mode="competence", actor=evaluator)
    study.refresh_from_db()
    assert "3 annotators with an estimate" in mode_info(study)["sentence"]
    html = client_for(evaluator).get(reverse("metrics:agreement", args=[study.pk])).content.decode()
    assert "rated alone" in html and 'name="units"' in html and "No unit has two judgments yet" not in html
    assert "(n = 2)" in html


def test_without_disagreement_there_is_no_competence_and_everyone_weighs_1(likert_study, annotators, evaluator):
    from arena.modes import mode_info
    from arena.services import ratings_mode_set

    study = likert_study(overlap=3, n_prompts=3)
    _rate_all(study, annotators, lambda n, u: {"factuality": 2, "style": 1 + u % 5})
    _refresh(study)
    payload = _snapshot(study)
    assert all(r["competence"] is None and r["flags"] == [] for r in payload["annotators"])
    assert "No competence from Factuality: every unit judged twice got the same answer" in payload["competence_note"]
    ratings_mode_set(study=study, mode="competence", actor=evaluator)
    study.refresh_from_db()
    assert mode_info(study)["weights"] == {}
    assert "every annotator weighs 1 for now, as there is no competence estimate yet" in mode_info(study)["sentence"]


def test_least_agreed_units_have_two_judgments_or_more(study_factory, annotators):
    """Units judged once (half of them here) have the highest vote entropy of none, but a posterior
    that may be uncertain; they never qualify."""
    study = study_factory(overlap=2)
    _vote(study, annotators[0], _rule(0))
    first = set(Judgment.objects.filter(study=study).values_list("unit_id", flat=True))
    n = 0
    while (a := services.assignment_next(study=study, annotator=annotators[1])) is not None:
        if n % 2 == 0:
            services.judgment_submit(assignment=a, choice="tie")
        else:
            services.task_skip(assignment=a, reason=services.Skip.Reason.values[0], note="skipped")
        n += 1
    _refresh(study)
    counts = Counter(Judgment.objects.filter(study=study).values_list("unit_id", flat=True))
    assert any(counts[u] == 1 for u in first)  # some units were judged once
    least = _snapshot(study)["least_agreed"]
    assert least and all(counts[u["unit"]] >= 2 and len(u["judgments"]) >= 2 for u in least)


def test_a_scale_shortened_after_ratings_ignores_the_answers_off_it(likert_study, annotators, evaluator):
    study = likert_study(overlap=3, n_prompts=4)
    _rate_all(study, annotators, lambda n, u: {"factuality": 1 + (u + n) % 3, "style": 1 + (u * 3 + n) % 5})
    shorter = [CRITERIA[0], {**CRITERIA[1], "scale": 3, "labels": ["Poor", "Fair", "Good"]}]
    services.study_update_tasks(study=study, tasks={"task_kinds": "likert", "likert_criteria": shorter,
                                                    "failure_tags": TAGS, "ask_rationale": "optional"})
    agreement_recompute(study_id=study.pk)
    agreement_recompute(study_id=study.pk)  # and again: every refresh succeeds
    payload = _snapshot(study)
    style = next(c for c in payload["criteria"] if c["key"] == "style")
    rows = list(Judgment.objects.filter(study=study).values_list("annotator_id", "unit_id", "ratings"))
    kept = [(a, u, r["style"]) for a, u, r in rows if r["style"] <= 3]
    assert style["off_scale"] == len(rows) - len(kept) > 0
    assert style["alpha"] == pytest.approx(_reference_alpha(kept, "ordinal", [1, 2, 3]), abs=1e-6)
    assert _kappas(payload, "style")
    html = client_for(evaluator).get(reverse("metrics:agreement", args=[study.pk])).content.decode()
    assert f"{style['off_scale']} answers outside 1–3 ignored (the scale was shortened after they were given)" in html


def test_one_criterion_failing_leaves_the_rest_of_the_snapshot(likert_study, annotators, monkeypatch):
    from metrics import agreement

    study = likert_study(overlap=3, n_prompts=3)
    _rate_all(study, annotators, _split_rule)
    real = agreement.pairwise_kappas

    def broken(triples, weights=None, labels=None, min_shared=2):
        if labels == [1, 2, 3]:
            raise RuntimeError("boom")
        return real(triples, weights=weights, labels=labels, min_shared=min_shared)

    monkeypatch.setattr(agreement, "pairwise_kappas", broken)
    _refresh(study)
    by_key = {c["key"]: c for c in _snapshot(study)["criteria"]}
    assert by_key["factuality"]["note"] == "not computed: RuntimeError: boom" and by_key["factuality"]["alpha"] is None
    assert by_key["style"]["alpha"] is not None and by_key["tag:hallucination"]["note"] == ""


def test_fleiss_kappa_uses_the_units_with_the_modal_number_of_ratings(study_factory, annotators):
    from statsmodels.stats import inter_rater

    study = study_factory(overlap=3)
    _vote(study, annotators[0], _rule(0))
    _vote(study, annotators[1], _rule(1))
    n = 0
    while (a := services.assignment_next(study=study, annotator=annotators[2])) is not None and n < 5:
        services.judgment_submit(assignment=a, choice="left")
        n += 1
    _refresh(study)
    fleiss = _snapshot(study)["criteria"][0]["fleiss"]
    triples = _choice_triples(study)
    per_unit = Counter(u for _, u, _ in triples)
    modal = Counter(per_unit.values()).most_common(1)[0][0]
    units = sorted(u for u, m in per_unit.items() if m == modal)
    assert (fleiss["raters_per_unit"], fleiss["units"], fleiss["of_units"]) == (modal, len(units), len(per_unit))
    table = np.zeros((len(units), 4))
    for _, u, v in triples:
        if u in units:
            table[units.index(u), v] += 1
    assert fleiss["kappa"] == pytest.approx(inter_rater.fleiss_kappa(table[:, table.sum(axis=0) > 0]), abs=1e-6)


def test_the_heatmap_shows_percent_agreement_and_shared_units_per_pair(voted, annotators, evaluator, manager):
    payload = _snapshot(voted)
    pair = next(k for k in _kappas(payload) if {k["a"], k["b"]} == {annotators[0].pk, annotators[1].pk})
    html = client_for(evaluator).get(reverse("metrics:agreement", args=[voted.pk])).content.decode()
    tip = (f"<title>ann1 and ann2: kappa {pair['kappa']:.3f}, percent agreement {100 * pair['percent']:.1f}%, "
           f"{pair['n']} units in common</title>")
    assert tip in html
    assert '<details id="agreement-pairs">' in html
    assert (f"<tr><td>ann1</td><td>ann2</td><td>{pair['kappa']:.3f}</td>"
            f"<td>{100 * pair['percent']:.0f}%</td><td>{pair['n']}</td></tr>") in html
    managed = client_for(manager).get(reverse("metrics:agreement", args=[voted.pk])).content.decode()
    assert "ann1 and ann2" not in managed and "<title>annotator-" in managed
    # one criterion at a time: another criterion's heatmap is asked for by name
    assert 'name="criterion"' in html


def _fake_competence(skills_by_name):
    from metrics import agreement

    def fit(triples, method="dawid_skene", seed=0):
        t = agreement._table(triples)
        skills = {a: skills_by_name(a) for a in t.annotators}
        return agreement.Competence(method=method, skills=skills, labels={u: t.domain[0] for u in t.units},
                                    uncertainty={u: 0.1 for u in t.units})
    return fit


def test_competence_flags_wait_for_enough_judgments(voted, annotators, monkeypatch, settings):
    from metrics import agreement

    low = annotators[2].pk
    monkeypatch.setattr(agreement, "competence", _fake_competence(lambda a: 0.2 if a == low else 0.9))
    agreement_recompute(study_id=voted.pk, force=True)
    rows = {r["user_id"]: r for r in _snapshot(voted)["annotators"]}
    assert rows[low]["judgments"] == 12 and rows[low]["competence"] == pytest.approx(0.2)
    assert not any(f.startswith(("Low competence", "MACE spammer")) for f in rows[low]["flags"])
    assert "Competence and MACE flags wait for 20 judgments" in _snapshot(voted)["competence_note"]
    settings.EVALSITE_AGREEMENT_MIN_JUDGMENTS = 12
    agreement_recompute(study_id=voted.pk)  # the threshold is part of the config: recomputed
    rows = {r["user_id"]: r for r in _snapshot(voted)["annotators"]}
    assert any(f.startswith("Low competence: Dawid-Skene skill 0.20 (below 0.5 and under 0.5 × the others' median")
               for f in rows[low]["flags"])
    assert any(f.startswith("MACE spammer: spamming probability 0.80 (above 0.5; competence under 0.5 × the others'")
               for f in rows[low]["flags"])
    assert not any(f.startswith("Low competence") for f in rows[annotators[0].pk]["flags"])


def test_a_fit_that_would_flag_everyone_flags_nobody(voted, monkeypatch, settings):
    from metrics import agreement

    settings.EVALSITE_AGREEMENT_MIN_JUDGMENTS = 1
    monkeypatch.setattr(agreement, "competence", _fake_competence(lambda a: 0.1))
    agreement_recompute(study_id=voted.pk, force=True)
    payload = _snapshot(voted)
    assert all(not f.startswith(("Low competence", "MACE spammer")) for r in payload["annotators"] for f in r["flags"])


def test_failure_tags_count_in_the_alpha_with_and_without_each_annotator(likert_study, annotators):
    study = likert_study(overlap=3, n_prompts=4)
    _rate_all(study, annotators, _split_rule)
    for j in Judgment.objects.filter(study=study):
        j.tags = ["hallucination"] if (j.unit_id + (j.annotator_id == annotators[2].pk)) % 2 else []
        j.save(update_fields=["tags"])
    _refresh(study)
    payload = _snapshot(study)
    rows = {r["user_id"]: r for r in payload["annotators"]}
    tag = [(a, u, int("hallucination" in t)) for a, u, t in
           Judgment.objects.filter(study=study).values_list("annotator_id", "unit_id", "tags")]
    three = annotators[2].pk
    with_, without = rows[three]["loo"]["tag:hallucination"]
    assert with_ == pytest.approx(_reference_alpha(tag, "nominal"), abs=1e-6)
    assert without == pytest.approx(_reference_alpha([t for t in tag if t[0] != three], "nominal"), abs=1e-6)
    assert rows[three]["tag_gain"] == pytest.approx(without - with_, abs=1e-6)  # "refused": never ticked


def test_honest_likert_raters_one_point_apart_are_not_flagged_but_a_random_one_is():
    """Real Dawid-Skene and MACE (crowd-kit) on a 5-point criterion: five honest raters, half of whose
    answers are one point off the truth, and one who answers at random.  The absolute marks alone
    would flag honest raters (some have MACE spamming above 0.5); relative to the median only the
    random rater is flagged."""
    import random

    from metrics import agreement
    from metrics.agreement_service import MAX_SPAMMING, competence_flags

    rng = random.Random(1)
    truth = {u: rng.randint(1, 5) for u in range(120)}
    names = [f"h{i}" for i in range(5)] + ["random"]
    triples = []
    for u, true in truth.items():
        for a in rng.sample(names, 3):
            off = 0 if rng.random() > 0.5 else rng.choice((-1, 1))
            triples.append((a, u, rng.randint(1, 5) if a == "random" else min(5, max(1, true + off))))
    ds = agreement.competence(triples, method="dawid_skene", seed=1).skills
    mace = agreement.competence(triples, method="mace", seed=1).skills
    rows = [{"user_id": a, "competence": ds[a], "mace": mace[a]} for a in names]
    assert any(1 - mace[a] > MAX_SPAMMING for a in names if a != "random")  # the absolute mark alone misfires
    low, spam, _, _ = competence_flags(rows)
    assert low == {"random"} and spam == {"random"}


def test_the_heatmaps_select_offers_every_criterion_with_pairs(likert_study, annotators, evaluator):
    """The select lists the criteria whose kappas exist (stored in rows of their own), so the
    evaluator can switch the heatmap without typing ?criterion= (it once listed none)."""
    study = likert_study(overlap=3, n_prompts=4)
    _rate_all(study, annotators, _split_rule)
    _refresh(study)
    html = client_for(evaluator).get(reverse("metrics:agreement", args=[study.pk])).content.decode()
    select = html.split('<select name="criterion">', 1)[1].split("</select>", 1)[0]
    assert re.findall(r'<option value="([^"]+)"', select)[:2] == ["factuality", "style"]
