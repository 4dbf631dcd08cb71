"""Annotators judge blind pairs: nothing on the page tells which model wrote what."""
import re
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from annotation import services
from annotation.models import Assignment, Judgment, StudyMember

CANDIDATES = ("alpha-model", "beta-model", "gamma-model")


@pytest.fixture
def study(study_factory):
    return study_factory(candidates=CANDIDATES)


def _token(html: str) -> str:
    return re.search(r'action="/tasks/([^"/]+)/"', html).group(1)


def test_the_task_page_shows_no_model_identity(client, study, annotators):
    client.force_login(annotators[0])
    response = client.get(reverse("annotation:annotate", args=[study.pk]))
    assert response.status_code == 200
    html = response.content.decode()
    assert "answer to p" in html  # the outputs themselves are shown ...
    for cand in study.candidates.all():  # ... but not who wrote them
        assert cand.name not in html
        assert f"candidate={cand.pk}" not in html
    for word in ("imported", "transformers", "openai", "backend", "model_a", "output_a"):
        assert word not in html
    # the task on screen and the one fetched ahead (held hidden in the page) alike
    leases = list(Assignment.objects.filter(annotator=annotators[0]).order_by("slot"))
    assert [a.slot for a in leases] == [0, 1]
    for assignment in leases:
        # the study's own links (Instructions) carry the study's id, which may equal the unit's
        assert assignment.token in html and f"/{assignment.unit_id}/" not in html.replace(f"/studies/{study.pk}/", "")
        for output in (assignment.unit.output_a, assignment.unit.output_b):
            assert f"output/{output.pk}" not in html and f'value="{output.pk}"' not in html


def test_the_output_on_the_left_is_balanced_across_annotators(study_factory, annotators):
    study = study_factory(candidates=("alpha-model", "beta-model"), overlap=3)
    sides = []
    for a in annotators:
        assignment = services.assignment_next(study=study, annotator=a)
        sides.append(assignment.left_is_a)
    # three annotators on the same unit (overlap 3, units picked fewest-first): not all one side
    assert len(set(Assignment.objects.values_list("unit", flat=True))) >= 1
    per_unit = {}
    for a in Assignment.objects.all():
        per_unit.setdefault(a.unit_id, []).append(a.left_is_a)
    assert all(abs(v.count(True) - v.count(False)) <= 1 for v in per_unit.values())


def test_a_vote_is_stored_in_terms_of_outputs_and_the_next_task_comes_back(client, study, annotators):
    client.force_login(annotators[0])
    html = client.get(reverse("annotation:annotate", args=[study.pk])).content.decode()
    token = _token(html)
    assignment = Assignment.objects.get(token=token)
    response = client.post(reverse("annotation:submit", args=[token]),
                           {"choice": "left", "rationale": "clearer", "active_ms": "2300"},
                           HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    judgment = Judgment.objects.get(assignment=assignment)
    left_output = assignment.unit.output_a if assignment.left_is_a else assignment.unit.output_b
    winner = assignment.unit.output_a if judgment.outcome == "a" else assignment.unit.output_b
    assert winner == left_output
    assert judgment.rationale == "clearer" and judgment.active_ms == 2300
    assert judgment.left_is_a == assignment.left_is_a
    nxt = response.content.decode()
    assert "<html" not in nxt and 'id="task"' in nxt
    assert _token(nxt) != token


def test_a_repeated_submission_is_recorded_once(client, study, annotators):
    client.force_login(annotators[0])
    token = _token(client.get(reverse("annotation:annotate", args=[study.pk])).content.decode())
    url = reverse("annotation:submit", args=[token])
    assert client.post(url, {"choice": "tie"}).status_code == 200
    assert client.post(url, {"choice": "tie"}).status_code == 200
    assert Judgment.objects.count() == 1
    changed = client.post(url, {"choice": "right"})
    assert changed.status_code == 409
    assert "already submitted" in changed.content.decode()
    assert Judgment.objects.get().outcome == "tie"


def test_a_forged_or_foreign_token_is_not_found(client, study, annotators):
    client.force_login(annotators[0])
    token = _token(client.get(reverse("annotation:annotate", args=[study.pk])).content.decode())
    client.force_login(annotators[1])
    assert client.post(reverse("annotation:submit", args=[token]), {"choice": "left"}).status_code == 404
    forged = "f" * 43  # the token alphabet and length, but no such lease
    assert client.post(reverse("annotation:submit", args=[forged]), {"choice": "left"}).status_code == 404
    assert client.post("/tasks/forged-token/", {"choice": "left"}).status_code == 404  # not even a token
    assert Judgment.objects.count() == 0


def test_an_unknown_choice_is_refused_with_its_name(client, study, annotators):
    client.force_login(annotators[0])
    token = _token(client.get(reverse("annotation:annotate", args=[study.pk])).content.decode())
    response = client.post(reverse("annotation:submit", args=[token]), {"choice": "sideways"})
    assert response.status_code == 400
    assert "choice" in response.content.decode()
    assert Judgment.objects.count() == 0


def test_submitting_needs_post(client, study, annotators):
    client.force_login(annotators[0])
    token = _token(client.get(reverse("annotation:annotate", args=[study.pk])).content.decode())
    assert client.get(reverse("annotation:submit", args=[token])).status_code == 405


def test_people_outside_the_study_cannot_annotate(client, study, make_user, manager):
    client.force_login(make_user("outsider"))
    assert client.get(reverse("annotation:annotate", args=[study.pk])).status_code == 404
    client.force_login(manager)
    assert client.get(reverse("annotation:annotate", args=[study.pk])).status_code == 403
    client.logout()
    assert client.get(reverse("annotation:annotate", args=[study.pk])).status_code == 302


def test_an_excluded_annotator_gets_no_more_tasks(client, study, annotators):
    StudyMember.objects.filter(study=study, user=annotators[0]).update(excluded=True)
    client.force_login(annotators[0])
    assert client.get(reverse("annotation:annotate", args=[study.pk])).status_code == 403


def test_overlap_is_never_exceeded_and_an_expired_lease_frees_its_place(study_factory, annotators):
    study = study_factory(candidates=("alpha-model", "beta-model"), overlap=1)  # 4 units
    held = [services.assignment_next(study=study, annotator=a) for a in annotators]
    assert len({a.unit_id for a in held}) == 3
    # the same annotator asking again gets the same lease back
    assert services.assignment_next(study=study, annotator=annotators[0]).pk == held[0].pk
    a4 = services.assignment_next(study=study, annotator=annotators[0], now=timezone.now() + timedelta(hours=2))
    # two hours later every lease has expired: the annotator's own old lease is renewed first
    assert a4 is not None
    for a in annotators[1:]:
        later = services.assignment_next(study=study, annotator=a, now=timezone.now() + timedelta(hours=2))
        assert later is not None
    live = Assignment.objects.filter(expires_at__gt=timezone.now() + timedelta(hours=2))
    assert live.count() == 3 and len(set(live.values_list("unit", flat=True))) == 3


def test_when_every_unit_is_judged_the_annotator_is_told_so(client, study_factory, annotators):
    study = study_factory(candidates=("alpha-model", "beta-model"), overlap=1)
    client.force_login(annotators[0])
    html = client.get(reverse("annotation:annotate", args=[study.pk])).content.decode()
    for _ in range(4):
        html = client.post(reverse("annotation:submit", args=[_token(html)]), {"choice": "left"}).content.decode()
    assert "All done" in html
    assert Judgment.objects.count() == 4


def test_an_expired_lease_taken_by_someone_else_is_refused(study_factory, annotators):
    study = study_factory(candidates=("alpha-model", "beta-model"), overlap=1, prompts=b"id,prompt\nq1,Hello?\n")
    first = services.assignment_next(study=study, annotator=annotators[0])
    later = timezone.now() + timedelta(hours=2)
    second = services.assignment_next(study=study, annotator=annotators[1], now=later)
    assert second is not None and second.unit_id == first.unit_id
    with pytest.raises(services.LeaseExpired):
        services.judgment_submit(assignment=first, choice="left", now=later)
    services.judgment_submit(assignment=second, choice="right", now=later)
    assert Judgment.objects.get().annotator == annotators[1]


def test_pairs_judged_by_an_excluded_annotator_are_served_again(study_factory, annotators):
    study = study_factory(candidates=("alpha-model", "beta-model"), overlap=1)  # 4 pairs
    while (a := services.assignment_next(study=study, annotator=annotators[0])) is not None:
        services.judgment_submit(assignment=a, choice="left")
    assert services.assignment_next(study=study, annotator=annotators[1]) is None
    services.member_exclude(study=study, user=annotators[0])
    served = 0
    while (a := services.assignment_next(study=study, annotator=annotators[1])) is not None:
        services.judgment_submit(assignment=a, choice="right")
        served += 1
    assert served == 4
    assert Judgment.objects.filter(annotator=annotators[0]).count() == 4  # kept, not deleted
