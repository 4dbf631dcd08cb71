"""Ratings modes: all annotators, flagged annotators left out, or votes weighted by competence."""
import pytest
from django.urls import reverse
from django.utils import timezone

from annotation import services
from annotation.models import AuditEntry, Study, StudyMember
from arena import ratings, selectors
from arena.models import RatingRequest, RatingSnapshot
from arena.services import ratings_mode_set, ratings_recompute
from metrics.summary import summary_recompute
from tests.annotation.test_likert import likert_study  # noqa: F401  (fixture)
from tests.conftest import client_for

pytestmark = pytest.mark.django_db

PROMPTS = ("id,prompt\n" + "".join(f"q{i},Question {i}?\n" for i in range(10))).encode()
CHOICES = ("left", "right", "tie", "left", "both_bad", "left", "right")


def _vote_all(study, annotator, offset: int) -> None:
    """Votes through every unit the annotator is served, in a pattern of their own."""
    k = offset
    while (a := services.assignment_next(study=study, annotator=annotator)) is not None:
        services.judgment_submit(assignment=a, choice=CHOICES[k % len(CHOICES)])
        k += 1 + offset


def _study(study_factory, annotators):
    study = study_factory(prompts=PROMPTS, overlap=3)
    for offset, annotator in enumerate(annotators):
        _vote_all(study, annotator, offset)
    return study


def _rows(snapshot):
    return [(r["model"], r["rating"], r["lower"], r["upper"]) for r in snapshot.payload["rows"]]


def _set_mode(study, mode):
    Study.objects.filter(pk=study.pk).update(ratings_mode=mode)


def _agreement(study, annotators: dict) -> None:
    """A hand-written agreement snapshot (its rows as metrics.agreement_service writes them)."""
    rows = [{"user_id": user.pk, "username": user.username, "flags": flags, "competence": competence}
            for user, (flags, competence) in annotators.items()]
    RatingSnapshot.objects.update_or_create(
        study=study, slice_key="all", method="agreement",
        defaults={"payload": {"annotators": rows}, "n_judgments": 0, "last_judgment_id": 0,
                  "computed_at": timezone.now()})


def test_leaving_out_flagged_annotators_equals_excluding_them_by_hand(study_factory, annotators):
    study = _study(study_factory, annotators)
    all_counted = ratings_recompute(study_id=study.pk, rounds=60, force=True)
    _agreement(study, {annotators[1]: (["Low competence: Dawid-Skene skill 0.31 (below 0.5)."], 0.31),
                       annotators[0]: ([], 0.9)})
    _set_mode(study, "exclude_flagged")
    left_out = ratings_recompute(study_id=study.pk, rounds=60)  # the mode changed: counted again in full
    assert left_out.payload["ratings_mode"]["left_out"] == [annotators[1].pk]
    assert left_out.payload["ratings_mode"]["sentence"] == "Flagged annotators left out (1)."
    assert left_out.n_judgments == all_counted.n_judgments - 10 * 3  # each annotator judged every unit once
    # the reference: the same annotator excluded by hand, ratings counting everyone else
    _set_mode(study, "all")
    services.member_exclude(study=study, user=annotators[1])
    by_hand = ratings_recompute(study_id=study.pk, rounds=60)
    assert _rows(left_out) == _rows(by_hand) and _rows(by_hand) != _rows(all_counted)
    assert not StudyMember.objects.get(study=study, user=annotators[0]).excluded


def test_without_an_agreement_snapshot_nobody_is_left_out(study_factory, annotators):
    study = _study(study_factory, annotators)
    plain = ratings_recompute(study_id=study.pk, rounds=40, force=True)
    _set_mode(study, "exclude_flagged")
    flagged_mode = ratings_recompute(study_id=study.pk, rounds=40)
    assert flagged_mode.payload["ratings_mode"]["left_out"] == []
    assert _rows(flagged_mode) == _rows(plain) and flagged_mode.n_judgments == plain.n_judgments


def test_annotators_flagged_by_the_quality_table_are_left_out_too(study_factory, annotators):
    study = _study(study_factory, annotators)
    RatingSnapshot.objects.create(
        study=study, slice_key="all", method="quality", n_judgments=0, last_judgment_id=0,
        computed_at=timezone.now(),
        payload={"annotators": {str(annotators[2].pk): {"flags": ["Speeding: half of the tasks took under 1 s."]}}})
    _set_mode(study, "exclude_flagged")
    assert ratings_recompute(study_id=study.pk, rounds=20).payload["ratings_mode"]["left_out"] == [annotators[2].pk]


def test_competence_weights_of_one_reproduce_the_unweighted_ratings_exactly(study_factory, annotators):
    study = _study(study_factory, annotators)
    plain = ratings_recompute(study_id=study.pk, rounds=80, force=True)
    # weights of exactly 1 are not weights: the weighted pass is skipped; force the weighted code
    # path with every annotator at 1 through the selector, and compare the counts it feeds the fit
    cells, n, last = selectors.weighted_cells(study.pk, "all", {a.pk: 1.0 for a in annotators})
    full, full_last = selectors.judgment_cells(study.pk, "all")
    table_w = selectors.battle_table(study.pk, cells=cells, last_judgment_id=last)
    table = selectors.battle_table(study.pk, cells=full, last_judgment_id=full_last)
    assert n == plain.n_judgments and last == full_last
    from arena.services import leaderboard_payload

    weighted = leaderboard_payload(table_w, rounds=80, seed=study.pk * 1_000_003 + last)
    unweighted = leaderboard_payload(table, rounds=80, seed=study.pk * 1_000_003 + last)
    assert weighted["rows"] == unweighted["rows"] == plain.payload["rows"]


def test_a_competence_weight_of_zero_equals_leaving_that_annotator_out(study_factory, annotators):
    study = _study(study_factory, annotators)
    _agreement(study, {annotators[0]: ([], 0.0), annotators[1]: ([], 1.0)})
    _set_mode(study, "competence")
    weighted = ratings_recompute(study_id=study.pk, rounds=60, force=True)
    assert weighted.payload["ratings_mode"]["weights"] == {str(annotators[0].pk): 0.0}
    assert weighted.payload["ratings_mode"]["sentence"].startswith(
        "Ratings weighted by annotator competence (Dawid-Skene")
    _set_mode(study, "all")
    services.member_exclude(study=study, user=annotators[0])
    by_hand = ratings_recompute(study_id=study.pk, rounds=60)
    assert _rows(weighted) == _rows(by_hand)


def test_competence_weights_move_the_fit_as_weighted_win_counts_say(study_factory, annotators):
    study = _study(study_factory, annotators)
    weights = {annotators[0].pk: 0.8, annotators[1].pk: 0.25}
    _agreement(study, {annotators[0]: ([], 0.8), annotators[1]: ([], 0.25)})
    _set_mode(study, "competence")
    weighted = ratings_recompute(study_id=study.pk, rounds=40, force=True)
    # the reference: the fit on counts summed by hand from each annotator's own cells
    names = sorted(weighted.payload["models"])
    total = None
    for annotator in annotators:
        others = [a.pk for a in annotators if a != annotator]
        cells, _ = selectors.judgment_cells(study.pk, left_out=others)
        table = selectors.battle_table(study.pk, cells=cells)
        w = weights.get(annotator.pk, 1.0)
        counts = ratings.counts_from_cells(table.models, table.a, table.b, table.outcome, table.count * w,
                                           fractional=True)
        total = counts if total is None else ratings.BattleCounts(
            models=counts.models, wins=total.wins + counts.wins, ties=total.ties + counts.ties,
            both_bad=total.both_bad + counts.both_bad, fractional=True)
    by_model = dict(zip(total.models, ratings.fit_bradley_terry(total)))
    got = {r["model"]: r["rating"] for r in weighted.payload["rows"]}
    for name in names:
        assert got[name] == pytest.approx(float(by_model[name]), abs=1e-3)


def test_the_evaluator_sets_the_mode_and_every_page_says_which(study_factory, annotators, evaluator, manager):
    study = _study(study_factory, annotators)
    _agreement(study, {annotators[2]: (["MACE spammer: spamming probability 0.80 (above 0.5)."], 0.2)})
    url = reverse("arena:ratings_mode", args=[study.pk])
    assert client_for(manager).post(url, {"mode": "exclude_flagged"}).status_code == 403
    bad = client_for(evaluator).post(url, {"mode": "loudest"})
    assert bad.status_code == 400 and "mode must be one of all, exclude_flagged, competence" in bad.content.decode()
    RatingRequest.objects.filter(study=study).update(pending=False)
    response = client_for(evaluator).post(url, {"mode": "exclude_flagged"})
    assert response.status_code == 302 and Study.objects.get(pk=study.pk).ratings_mode == "exclude_flagged"
    assert RatingRequest.objects.get(study=study, slice_key="all").pending  # a recompute was requested
    assert AuditEntry.objects.filter(study=study, action="ratings_mode_changed").count() == 1
    ratings_recompute(study_id=study.pk, rounds=20)
    page = client_for(manager).get(reverse("arena:leaderboard", args=[study.pk])).content.decode()
    assert "Flagged annotators left out (1)." in page and 'id="ratings-mode-form"' not in page  # managers read
    own = client_for(evaluator).get(reverse("arena:leaderboard", args=[study.pk])).content.decode()
    assert 'id="ratings-mode-form"' in own and '<option value="exclude_flagged" selected>' in own
    api = client_for(manager).get(f"/api/studies/{study.pk}/leaderboard").json()
    assert api["ratings_mode"]["mode"] == "exclude_flagged" and api["ratings_mode"]["left_out"] == [annotators[2].pk]
    summary_recompute(study_id=study.pk)
    summary = client_for(manager).get(reverse("metrics:summary", args=[study.pk])).content.decode()
    assert "Ratings and Likert means: Flagged annotators left out (1)." in summary
    ratings_mode_set(study=study, mode="all")
    ratings_recompute(study_id=study.pk, rounds=20)
    page = client_for(manager).get(reverse("arena:leaderboard", args=[study.pk])).content.decode()
    assert "All annotators counted." in page


def test_competence_weights_the_likert_means_too(likert_study, annotators):  # noqa: F811
    """In the competence mode a Likert mean is Σw·x/Σw over the annotators' points."""
    from annotation.models import Judgment

    study = likert_study(kinds="likert", overlap=3, n_prompts=4)
    styles = {0: 5, 1: 2, 2: 3}
    for n, annotator in enumerate(annotators[:3]):
        while (a := services.assignment_next(study=study, annotator=annotator)) is not None:
            services.judgment_submit(assignment=a, ratings={"factuality": 1 + n, "style": styles[n]})
    weights = {annotators[0]: 0.9, annotators[1]: 0.3}  # the third is not rated: weight 1
    _agreement(study, {user: ([], w) for user, w in weights.items()})
    _set_mode(study, "competence")
    snapshot = ratings_recompute(study_id=study.pk, force=True)
    by_user = {a.pk: weights.get(a, 1.0) for a in annotators[:3]}
    for row in snapshot.payload["likert"]["candidates"]:
        judged = Judgment.objects.filter(study=study, unit__output_a__candidate__name=row["candidate"])
        w = [by_user[j.annotator_id] for j in judged]
        x = [j.ratings["style"] for j in judged]
        assert row["criteria"]["style"]["mean"] == pytest.approx(sum(a * b for a, b in zip(w, x)) / sum(w), abs=1e-4)
    assert "in the ratings and the Likert means" in snapshot.payload["ratings_mode"]["sentence"]


@pytest.mark.parametrize("mode", ["exclude_flagged", "competence"])
def test_the_summarys_output_level_agreement_counts_people_as_the_mode_says(likert_study, annotators, mode):  # noqa: F811
    """Kendall tau / Spearman rho of a metric with the human mean per output use the mode's means:
    the flagged annotator left out, or every point weighted by its annotator's competence."""
    import numpy as np
    from scipy import stats

    from annotation.models import Judgment, Output
    from metrics.models import MetricRun, OutputScore
    from metrics.summary import stored_summary

    study = likert_study(kinds="likert", overlap=3, n_prompts=4)
    # points and metric values by each output's place in the study, not by serving order or ids:
    # the same figures on every run and either database
    place = {pk: i for i, pk in enumerate(Output.objects.filter(study=study).order_by("pk").values_list("pk", flat=True))}
    for n, annotator in enumerate(annotators[:3]):
        while (a := services.assignment_next(study=study, annotator=annotator)) is not None:
            i = place[a.unit.output_a_id]
            # the second annotator rates against the others: leaving them out changes the ranks
            point = 5 - (i * 3) % 5 if n == 1 else 1 + i % 5
            services.judgment_submit(assignment=a, ratings={"factuality": 2, "style": point})
    run = MetricRun.objects.create(study=study, metric="rougeL", options_hash="m", status="done",
                                   finished_at=timezone.now())
    for out in Output.objects.filter(study=study):
        OutputScore.objects.create(run=run, output=out, value=(place[out.pk] * 7 % 5) / 10 + place[out.pk] / 100)
    weights = {annotators[0]: 0.9, annotators[1]: 0.2, annotators[2]: 0.6}
    _agreement(study, {u: (["flagged"] if u == annotators[1] else [], w) for u, w in weights.items()})

    def tau_of(summary_data) -> dict:
        return next(a for a in summary_data["output_agreement"] if a["criterion"] == "Style consistency")

    ratings_recompute(study_id=study.pk, force=True)
    summary_recompute(study_id=study.pk, force=True)
    everyone = tau_of(stored_summary(study)[1])
    _set_mode(study, mode)
    ratings_recompute(study_id=study.pk, force=True)
    summary_recompute(study_id=study.pk, force=True)
    got = tau_of(stored_summary(study)[1])

    sums: dict[int, list[float]] = {}
    for j in Judgment.objects.filter(study=study, ratings__isnull=False).select_related("unit"):
        w = (0.0 if j.annotator_id == annotators[1].pk else 1.0) if mode == "exclude_flagged" else \
            {u.pk: w for u, w in weights.items()}[j.annotator_id]
        acc = sums.setdefault(j.unit.output_a_id, [0.0, 0.0])
        acc[0] += w * j.ratings["style"]
        acc[1] += w
    outputs = sorted(sums)
    metric = [OutputScore.objects.get(run=run, output_id=o).value for o in outputs]
    means = [sums[o][0] / sums[o][1] for o in outputs]
    assert got["kendall_tau"]["n"] == len(outputs) == 8
    assert got["kendall_tau"]["value"] == pytest.approx(stats.kendalltau(metric, means).statistic)
    assert got["spearman_rho"]["value"] == pytest.approx(stats.spearmanr(metric, means).statistic)
    assert got["kendall_tau"]["value"] != pytest.approx(everyone["kendall_tau"]["value"])
    assert not np.isnan(got["kendall_tau"]["value"])


def test_the_competence_mode_says_everyone_weighs_1_without_an_estimate(study_factory, annotators):
    from arena.modes import mode_info

    study = _study(study_factory, annotators)
    _set_mode(study, "competence")
    study.refresh_from_db()
    _agreement(study, {user: ([], None) for user in annotators})  # a snapshot without competence
    info = mode_info(study)
    assert info["weights"] == {}
    assert info["sentence"] == ("Ratings weighted by annotator competence: every annotator weighs 1 for now, as "
                                "there is no competence estimate yet (it needs units judged by two annotators or "
                                "more, with some disagreement).")
    _agreement(study, {annotators[0]: ([], 0.4), annotators[1]: ([], 1.0)})
    assert "1 of 2 annotators with an estimate weigh less than 1" in mode_info(study)["sentence"]
