"""A candidate hidden from new pairs keeps its rating, and the leaderboard (page and API) marks it."""
import re

import pytest
from django.test import Client
from django.urls import reverse

from annotation import services
from annotation.models import Candidate
from arena.services import ratings_recompute

pytestmark = pytest.mark.django_db


def _vote_left_everywhere(study, annotator):
    while (a := services.assignment_next(study=study, annotator=annotator)) is not None:
        services.judgment_submit(assignment=a, choice="left")


@pytest.fixture
def judged(study_factory, annotators):
    study = study_factory(candidates=("alpha-model", "beta-model", "gamma-model"))
    _vote_left_everywhere(study, annotators[0])  # 4 prompts x 3 pairs, overlap 1
    ratings_recompute(study_id=study.pk, rounds=50)
    return study


def _row(html: str, model: str) -> str:
    start = html.index(f'<td class="model">{model}')
    return html[start:html.index("</tr>", start)]


def test_a_hidden_candidate_keeps_its_rating_and_is_marked_on_the_page_and_in_the_api(judged, evaluator, manager):
    study = judged
    gamma = Candidate.objects.get(study=study, name="gamma-model")
    owner, reader = Client(), Client()
    owner.force_login(evaluator)
    reader.force_login(manager)
    before = reader.get(reverse("api-leaderboard", args=[study.pk])).json()["rows"]
    assert [r["hidden"] for r in before] == [False, False, False]
    assert "hidden from new pairs" not in reader.get(reverse("arena:leaderboard", args=[study.pk])).content.decode()

    hide = owner.post(reverse("annotation:candidate_hide", args=[study.pk, gamma.pk]), {"hidden": "1"})
    assert hide.status_code == 302

    after = {r["model"]: r for r in reader.get(reverse("api-leaderboard", args=[study.pk])).json()["rows"]}
    assert after["gamma-model"]["hidden"] is True
    assert not after["alpha-model"]["hidden"] and not after["beta-model"]["hidden"]
    old = {r["model"]: r for r in before}
    assert after["gamma-model"]["rating"] == old["gamma-model"]["rating"]
    assert after["gamma-model"]["battles"] == old["gamma-model"]["battles"] == 8  # 4 prompts x 2 opponents
    for htmx in (False, True):
        extra = {"HTTP_HX_REQUEST": "true"} if htmx else {}
        html = reader.get(reverse("arena:leaderboard", args=[study.pk]), **extra).content.decode()
        assert "hidden from new pairs" in _row(html, "gamma-model")
        assert "hidden from new pairs" not in _row(html, "alpha-model")
        assert len(re.findall("hidden from new pairs</span>", html)) == 1

    # Shown again: the mark goes, the rating stays.
    owner.post(reverse("annotation:candidate_hide", args=[study.pk, gamma.pk]), {"hidden": "0"})
    rows = reader.get(reverse("api-leaderboard", args=[study.pk])).json()["rows"]
    assert [r["hidden"] for r in rows] == [False, False, False]
    assert "hidden from new pairs" not in reader.get(reverse("arena:leaderboard", args=[study.pk])).content.decode()
