"""Leaderboard slices, bias diagnostics, style control, the online preview, adaptive sampling."""
import numpy as np
import pytest
from django.urls import reverse

from annotation import services
from annotation.models import Judgment, Output, StudyMember, Unit
from arena import ratings, sampling
from arena.models import RatingSnapshot
from arena.services import adaptive_state, online_elo_update, ratings_recompute, ratings_refresh
from tests.helpers.reference import logistic_elo


def _vote(study, annotator, decide):
    """Judge every open unit; ``decide(left_output, right_output)`` returns a side choice."""
    while (a := services.assignment_next(study=study, annotator=annotator)) is not None:
        unit = a.unit
        left, right = (unit.output_a, unit.output_b) if a.left_is_a else (unit.output_b, unit.output_a)
        services.judgment_submit(assignment=a, choice=decide(left, right))


def _left_always(left, right):
    return "left"


def test_a_tag_slice_counts_only_prompts_with_that_tag(study_factory, annotators):
    study = study_factory(overlap=1)  # tags: p1 account;easy, p2 shipping, p3 billing;hard, p4 account
    _vote(study, annotators[0], lambda left, right: "left" if left.candidate.name < right.candidate.name else "right")
    all_ = ratings_recompute(study_id=study.pk, rounds=50)
    account = ratings_recompute(study_id=study.pk, slice_key="tag:account", rounds=50)
    assert all_.n_judgments == 12
    assert account.n_judgments == Judgment.objects.filter(unit__prompt__external_id__in=["p1", "p4"]).count() == 6
    assert sum(r["battles"] for r in account.payload["rows"]) == 2 * 6


def test_a_group_slice_counts_only_that_groups_annotators(study_factory, annotators):
    study = study_factory(overlap=3)
    StudyMember.objects.filter(study=study, user__in=annotators[:2]).update(group="experts")
    for a in annotators:
        _vote(study, a, _left_always)
    experts = ratings_recompute(study_id=study.pk, slice_key="group:experts", rounds=50)
    assert experts.n_judgments == 24
    with pytest.raises(ValueError, match="unknown slice"):
        ratings_recompute(study_id=study.pk, slice_key="colour:blue")


def test_the_page_offers_slices_and_swaps_them_with_htmx(client, study_factory, annotators, manager):
    study = study_factory(overlap=1)
    StudyMember.objects.filter(study=study, user=annotators[0]).update(group="experts")
    _vote(study, annotators[0], _left_always)
    ratings_recompute(study_id=study.pk, rounds=50)
    ratings_recompute(study_id=study.pk, slice_key="tag:hard", rounds=50)
    client.force_login(manager)
    page = client.get(reverse("arena:leaderboard", args=[study.pk])).content.decode()
    for key in ('value="all"', 'value="tag:account"', 'value="tag:billing"', 'value="group:experts"'):
        assert key in page
    part = client.get(reverse("arena:leaderboard", args=[study.pk]), {"slice": "tag:hard"}, HTTP_HX_REQUEST="true")
    html = part.content.decode()
    assert "<html" not in html and "from 3 judgments" in html
    # a slice not computed yet says so; once the "all" refresh has requested it, the page polls
    fresh = client.get(reverse("arena:leaderboard", args=[study.pk]), {"slice": "tag:shipping"}).content.decode()
    assert "Not computed yet" in fresh and 'hx-trigger="every 3s"' not in fresh
    ratings_refresh(study_id=study.pk, slice_key="all")
    fresh = client.get(reverse("arena:leaderboard", args=[study.pk]), {"slice": "tag:shipping"}).content.decode()
    assert "Not computed yet" in fresh and 'hx-trigger="every 3s"' in fresh


def test_position_bias_is_the_share_of_decisive_votes_won_on_the_left(study_factory, annotators):
    study = study_factory(overlap=3)
    _vote(study, annotators[0], _left_always)
    _vote(study, annotators[1], lambda left, right: "right")
    _vote(study, annotators[2], lambda left, right: "tie")
    p = ratings_recompute(study_id=study.pk, rounds=50).payload["position_bias"]
    assert p["trials"] == 24 and p["successes"] == 12 and p["share"] == pytest.approx(0.5)
    expected = ratings.wilson_interval(12, 24)
    assert (p["lower"], p["upper"]) == (pytest.approx(expected.lower), pytest.approx(expected.upper))


def _set_lengths(study, lengths):
    for o in Output.objects.filter(study=study).select_related("candidate"):
        o.text = "x" * lengths[o.candidate.name]
        o.save(update_fields=["text"])


def test_style_control_matches_an_independent_logistic_regression(study_factory, make_user):
    study = study_factory(candidates=("alpha-model", "beta-model", "gamma-model"), overlap=8)
    _set_lengths(study, {"alpha-model": 30, "beta-model": 10, "gamma-model": 10})  # diffs of 0, +-0.5
    voters = [make_user(f"v{i}") for i in range(8)]
    for v in voters:
        services.member_set(study=study, user=v, role="annotator")
    rng = np.random.default_rng(0)
    for v in voters:
        _vote(study, v, lambda left, right: rng.choice(["left", "right", "tie"], p=[0.55, 0.35, 0.10]))
    payload = ratings_recompute(study_id=study.pk, rounds=50).payload
    # independent: logistic regression on every judgment, with the normalised length difference
    battles, lengths = [], []
    for j in Judgment.objects.select_related("unit__output_a__candidate", "unit__output_b__candidate"):
        oa, ob = j.unit.output_a, j.unit.output_b
        battles.append((oa.candidate.name, ob.candidate.name, {"a": 1.0, "b": 0.0}.get(j.outcome, 0.5)))
        lengths.append([(len(oa.text) - len(ob.text)) / (len(oa.text) + len(ob.text))])
    expected, (length_elo,) = logistic_elo(battles, extra_features=np.array(lengths))
    style = payload["style"]
    assert style["available"]
    for m in expected:
        assert style["ratings"][m] == pytest.approx(expected[m], abs=0.05)
    assert style["length_coefficient_elo"] == pytest.approx(length_elo, abs=0.05)


def test_length_bias_reports_how_often_the_longer_output_wins(study_factory, annotators):
    study = study_factory(candidates=("alpha-model", "beta-model"), overlap=1)
    _set_lengths(study, {"alpha-model": 30, "beta-model": 10})
    _vote(study, annotators[0], lambda left, right: "left" if len(left.text) > len(right.text) else "right")
    lb = ratings_recompute(study_id=study.pk, rounds=50).payload["length_bias"]
    assert lb["longer_wins"]["trials"] == 4 and lb["longer_wins"]["share"] == 1.0
    plus_half = [b for b in lb["bins"] if b["low"] <= 0.5 <= b["high"] and b["trials"]]
    minus_half = [b for b in lb["bins"] if b["low"] <= -0.5 <= b["high"] and b["trials"]]
    # orientation is unit.output_a minus output_b; whichever side is longer won
    assert [b["share"] for b in plus_half + minus_half] in ([1.0], [0.0], [1.0, 0.0], [0.0, 1.0])


def test_the_online_elo_preview_is_incremental_and_equals_a_full_replay(study_factory, annotators):
    study = study_factory(overlap=2)
    _vote(study, annotators[0], _left_always)
    first = online_elo_update(study_id=study.pk)
    assert first.n_judgments == 12
    _vote(study, annotators[1], lambda left, right: "right")
    updated = online_elo_update(study_id=study.pk)
    assert updated.n_judgments == 24
    js = Judgment.objects.filter(study=study).order_by("id").select_related(
        "unit__output_a__candidate", "unit__output_b__candidate")
    names = {"a": "model_a", "b": "model_b", "tie": "tie", "both_bad": "tie (bothbad)"}
    replay = ratings.online_elo([j.unit.output_a.candidate.name for j in js],
                                [j.unit.output_b.candidate.name for j in js], [names[j.outcome] for j in js], k=4)
    assert updated.payload["ratings"] == pytest.approx(replay)


def test_adaptive_sampling_serves_the_most_informative_pair_first(study_factory, annotators, make_user):
    study = study_factory(candidates=("alpha-model", "beta-model", "gamma-model"), overlap=3)
    _vote(study, annotators[0], lambda left, right: "left" if left.candidate.name < right.candidate.name else "right")
    ratings_recompute(study_id=study.pk, rounds=200)
    study.adaptive_sampling = True
    study.save()
    models, rating, cov, pair_battles = adaptive_state(study.pk)
    pairs = [(i, j) for i in range(3) for j in range(i + 1, 3)]
    scores = sampling.pair_scores(rating, pair_battles, pairs, cov=cov)
    best = {models[pairs[int(np.argmax(scores))][0]], models[pairs[int(np.argmax(scores))][1]]}
    a = services.assignment_next(study=study, annotator=annotators[1])
    served = {a.unit.output_a.candidate.name, a.unit.output_b.candidate.name}
    assert served == best
    # still within the overlap: every unit ends with exactly three judgments
    for annotator in annotators[1:]:
        _vote(study, annotator, _left_always)
    counts = [u.judgments.count() for u in Unit.objects.filter(study=study)]
    assert counts == [3] * len(counts)


def test_the_evaluator_turns_on_adaptive_sampling(client, study_factory):
    study = study_factory()
    client.force_login(study.created_by)
    response = client.post(reverse("annotation:settings", args=[study.pk]), {"overlap": 2, "adaptive_sampling": "on"})
    assert response.status_code == 302
    study.refresh_from_db()
    assert study.adaptive_sampling and study.overlap == 2
    assert set(Unit.objects.filter(study=study).values_list("needed", flat=True)) == {2}
    assert RatingSnapshot.objects.count() == 0
