"""The manager's leaderboard against an independent Bradley-Terry fit of the same votes."""
from datetime import timedelta
from itertools import cycle

import pytest
from django.urls import reverse
from django.utils import timezone

from annotation import services
from annotation.models import Judgment, StudyMember
from arena.models import RatingSnapshot
from arena.services import ratings_recompute
from tests.helpers.reference import logistic_elo

# What the annotators prefer, by candidate pair: a repeating pattern of verdicts.
PATTERN = {
    ("alpha-model", "beta-model"): cycle(["alpha-model", "alpha-model", "beta-model", "tie"]),
    ("alpha-model", "gamma-model"): cycle(["alpha-model", "alpha-model", "alpha-model", "gamma-model", "both_bad"]),
    ("beta-model", "gamma-model"): cycle(["beta-model", "gamma-model", "beta-model"]),
}


def _vote_everything(study, annotators):
    """Every annotator judges every unit through the services; returns the battles cast."""
    battles = []
    for annotator in annotators:
        while (a := services.assignment_next(study=study, annotator=annotator)) is not None:
            unit = a.unit
            left, right = (unit.output_a, unit.output_b) if a.left_is_a else (unit.output_b, unit.output_a)
            names = (left.candidate.name, right.candidate.name)
            key = tuple(sorted(names))
            verdict = next(PATTERN[key])
            if verdict in ("tie", "both_bad"):
                choice = verdict
            else:
                choice = "left" if verdict == names[0] else "right"
            services.judgment_submit(assignment=a, choice=choice)
            battles.append((key[0], key[1], verdict))
    return battles


def _independent_elo(battles):
    score = {"tie": 0.5, "both_bad": 0.5}
    return logistic_elo([(a, b, score.get(v, 1.0 if v == a else 0.0)) for a, b, v in battles])[0]


@pytest.fixture
def judged_study(study_factory, annotators):
    study = study_factory(candidates=("alpha-model", "beta-model", "gamma-model"), overlap=3)
    battles = _vote_everything(study, annotators)
    assert len(battles) == 36  # 4 prompts x 3 pairs x 3 annotators
    return study, battles


def test_the_ratings_match_an_independent_fit(judged_study):
    study, battles = judged_study
    snapshot = ratings_recompute(study_id=study.pk, rounds=200)
    expected = _independent_elo(battles)
    rows = {r["model"]: r for r in snapshot.payload["rows"]}
    for model, rating in expected.items():
        assert rows[model]["rating"] == pytest.approx(rating, abs=0.01)
    assert sum(r["rating"] for r in rows.values()) / 3 == pytest.approx(1000, abs=1e-6)
    assert [r["model"] for r in snapshot.payload["rows"]] == sorted(expected, key=expected.get, reverse=True)


def test_counts_intervals_and_ranks_are_consistent(judged_study):
    study, battles = judged_study
    payload = ratings_recompute(study_id=study.pk, rounds=300).payload
    for row in payload["rows"]:
        mine = [b for b in battles if row["model"] in b[:2]]
        assert row["battles"] == len(mine) == 24
        assert row["wins"] == sum(b[2] == row["model"] for b in mine)
        assert row["ties"] == sum(b[2] in ("tie", "both_bad") for b in mine)
        assert row["both_bad"] == sum(b[2] == "both_bad" for b in mine)
        assert row["win_rate"] == pytest.approx((row["wins"] + row["ties"] / 2) / 24)
        assert row["lower"] < row["rating"] < row["upper"]
        above = sum(other["lower"] > row["upper"] for other in payload["rows"])
        assert row["rank"] == 1 + above


def test_excluded_annotators_drop_out_of_the_ratings(judged_study, annotators):
    study, _ = judged_study
    StudyMember.objects.filter(study=study, user=annotators[0]).update(excluded=True)
    snapshot = ratings_recompute(study_id=study.pk, force=True, rounds=50)
    assert snapshot.n_judgments == 24


def test_a_recompute_with_no_new_votes_is_skipped(judged_study):
    study, _ = judged_study
    # once every judgment is older than the settle window, nothing can still join them
    Judgment.objects.filter(study=study).update(submitted_at=timezone.now() - timedelta(minutes=10))
    first = ratings_recompute(study_id=study.pk, rounds=50)
    again = ratings_recompute(study_id=study.pk, rounds=50)
    assert again.computed_at == first.computed_at
    assert RatingSnapshot.objects.filter(study=study).count() == 1


def test_an_undefeated_model_gets_a_stated_prior(study_factory, annotators):
    study = study_factory(candidates=("alpha-model", "beta-model"), overlap=1)
    while (a := services.assignment_next(study=study, annotator=annotators[0])) is not None:
        unit = a.unit
        alpha_left = (unit.output_a if a.left_is_a else unit.output_b).candidate.name == "alpha-model"
        services.judgment_submit(assignment=a, choice="left" if alpha_left else "right")
    payload = ratings_recompute(study_id=study.pk, rounds=50).payload
    assert payload["regularization"] > 0
    assert payload["note"].startswith("alpha-model won every battle so far, and beta-model lost every battle so "
                                      "far, so the votes alone cannot say how far apart the ratings are.")
    assert "regularization" not in payload["note"] and "{" not in payload["note"]
    assert payload["rows"][0]["model"] == "alpha-model"


def test_the_manager_reads_the_leaderboard_page(client, judged_study, manager):
    study, _ = judged_study
    ratings_recompute(study_id=study.pk, rounds=100)
    client.force_login(manager)
    response = client.get(reverse("arena:leaderboard", args=[study.pk]))
    html = response.content.decode()
    assert response.status_code == 200
    assert "leaderboard-table" in html and "alpha-model" in html
    assert "<svg" in html and "95% bootstrap interval" in html
    assert "from 36 judgments" in html
    partial = client.get(reverse("arena:leaderboard", args=[study.pk]), HTTP_HX_REQUEST="true").content.decode()
    assert "<html" not in partial and "leaderboard-table" in partial


def test_annotators_and_outsiders_cannot_read_the_leaderboard(client, judged_study, annotators, make_user):
    study, _ = judged_study
    client.force_login(annotators[0])
    assert client.get(reverse("arena:leaderboard", args=[study.pk])).status_code == 403
    client.force_login(make_user("stranger"))
    assert client.get(reverse("arena:leaderboard", args=[study.pk])).status_code == 404
    assert client.get(reverse("api-leaderboard", args=[study.pk])).status_code == 404


def test_the_rest_api_gives_the_same_numbers(client, judged_study, manager):
    study, _ = judged_study
    snapshot = ratings_recompute(study_id=study.pk, rounds=100)
    client.force_login(manager)
    data = client.get(reverse("api-leaderboard", args=[study.pk])).json()
    assert data["n_judgments"] == 36
    assert [r["rating"] for r in data["rows"]] == [r["rating"] for r in snapshot.payload["rows"]]


def test_the_rest_api_serves_slices_and_refuses_unknown_ones(client, judged_study, manager):
    study, _ = judged_study
    ratings_recompute(study_id=study.pk, slice_key="tag:account", rounds=50)
    client.force_login(manager)
    data = client.get(reverse("api-leaderboard", args=[study.pk]), {"slice": "tag:account"}).json()
    assert data["slice"] == "tag:account" and data["n_judgments"] == 18
    assert "tag:billing" in data["slices"] and data["position_bias"]["trials"] > 0
    bad = client.get(reverse("api-leaderboard", args=[study.pk]), {"slice": "tag:nope"})
    assert bad.status_code == 400 and "unknown slice" in str(bad.json()["slice"])
