"""Refused votes in a real headless Chromium: the annotator sees why, and their current task."""
from datetime import timedelta

import pytest
from django.utils import timezone

from annotation import services
from annotation.models import Assignment, Judgment, Study

from .conftest import login

ONE_PROMPT = b"id,prompt\nq1,Hello?\n"

pytestmark = pytest.mark.django_db(transaction=True)


def _open_annotate(page, base: str, study: Study):
    response = page.goto(f"{base}/studies/{study.pk}/annotate/")
    assert response.status == 200
    page.wait_for_selector("#task")
    return response


def _token(page) -> str:
    action = page.get_attribute("#task-form", "action")
    assert action.startswith("/tasks/") and action.endswith("/"), action
    return action[len("/tasks/"):-1]


def _press(page, key: str):
    """Press a judging key and return the response to the vote it sends."""
    page.bring_to_front()
    with page.expect_response(lambda r: "/tasks/" in r.url and r.request.method == "POST") as info:
        page.keyboard.press(key)
    return info.value


def _stored(choice: str, assignment: Assignment) -> str:
    return {("left", True): "a", ("left", False): "b",
            ("right", True): "b", ("right", False): "a"}[(choice, assignment.left_is_a)]


def test_a_second_tab_voting_otherwise_on_a_judged_task_sees_the_refusal_and_its_current_task(
        live_server, browser, study_factory, annotators):
    study = study_factory()
    base = live_server.url
    context = browser.new_context()
    context.set_default_timeout(30_000)
    tab1, tab2 = context.new_page(), context.new_page()
    login(tab1, base, annotators[0].username)

    response = _open_annotate(tab1, base, study)
    assert "no-store" in response.headers.get("cache-control", "")
    _open_annotate(tab2, base, study)
    first = _token(tab1)
    assert _token(tab2) == first
    tab1.wait_for_selector('#done-count:text-is("0")')

    assert _press(tab1, "1").status == 200
    tab1.wait_for_selector('#done-count:text-is("1")')
    second = _token(tab1)
    assert second != first

    refused = _press(tab2, "2")
    assert refused.status == 409, refused.text()[:2000]
    box = tab2.wait_for_selector('#task .error-box[role=alert]:has-text("already submitted with another answer")')
    assert box.inner_text() == "This task was already submitted with another answer."
    tab2.wait_for_selector('#done-count:text-is("1")')
    assert _token(tab2) == second
    assert tab2.evaluate(
        "() => Boolean(document.querySelector('#task .error-box').compareDocumentPosition("
        "document.getElementById('task-form')) & Node.DOCUMENT_POSITION_FOLLOWING)"
    )
    assert tab2.url == f"{base}/studies/{study.pk}/annotate/"

    first_assignment = Assignment.objects.get(token=first)
    stored = list(Judgment.objects.filter(assignment=first_assignment).values_list("outcome", flat=True))
    assert stored == [_stored("left", first_assignment)]
    assert Judgment.objects.filter(study=study).count() == 1

    assert _press(tab2, "1").status == 200
    tab2.wait_for_selector('#done-count:text-is("2")')
    assert tab2.locator(".error-box").count() == 0
    assert _token(tab2) not in (first, second)
    second_assignment = Assignment.objects.get(token=second)
    assert Judgment.objects.get(assignment=second_assignment).outcome == _stored("left", second_assignment)
    assert Judgment.objects.filter(study=study, annotator=annotators[0]).count() == 2
    context.close()


def test_a_vote_on_a_lease_that_expired_and_went_to_someone_else_is_refused(
        live_server, browser, study_factory, annotators):
    study = study_factory(candidates=("alpha-model", "beta-model"), overlap=1, prompts=ONE_PROMPT)
    assert study.units.count() == 1
    first, second = annotators[0], annotators[1]
    base = live_server.url
    page = browser.new_page()
    page.set_default_timeout(30_000)
    login(page, base, first.username)
    _open_annotate(page, base, study)
    token = _token(page)

    now = timezone.now()
    assert Assignment.objects.filter(token=token, annotator=first).update(expires_at=now - timedelta(minutes=1)) == 1
    assert services.leases_release_expired(study_id=study.pk, now=now) == 1
    taken = services.assignment_next(study=Study.objects.get(pk=study.pk), annotator=second)
    assert taken is not None and taken.token != token
    _, created = services.judgment_submit(assignment=taken, choice="tie")
    assert created

    refused = _press(page, "1")
    assert refused.status == 409, refused.text()[:2000]
    page.wait_for_selector('#task .error-box[role=alert]:has-text("lease expired and someone else has taken it")')
    page.wait_for_selector('#task h2:text-is("All done")')
    assert page.locator("#task-form").count() == 0
    assert page.inner_text("#done-count") == "0"
    assert not Judgment.objects.filter(study=study, annotator=first).exists()
    assert list(Judgment.objects.filter(study=study).values_list("annotator", flat=True)) == [second.pk]


def test_a_vote_on_a_task_that_is_not_the_annotators_shows_a_problem_and_keeps_the_page(
        live_server, browser, study_factory, annotators):
    study = study_factory()
    base = live_server.url
    page = browser.new_page()
    page.set_default_timeout(30_000)
    login(page, base, annotators[0].username)
    _open_annotate(page, base, study)
    token = _token(page)
    assert Assignment.objects.filter(token=token).update(annotator=annotators[1]) == 1

    refused = _press(page, "1")
    assert refused.status == 404
    problem = page.wait_for_selector('#task-problem[role=alert]:has-text("this task is not yours or no longer exists")')
    assert problem.inner_text().startswith("Not recorded (404)")
    assert page.url == f"{base}/studies/{study.pk}/annotate/"
    assert _token(page) == token
    assert page.locator("#task-form button:disabled").count() == 0
    assert not Judgment.objects.filter(study=study).exists()


def test_back_and_forward_never_show_a_judged_pair_as_open(live_server, browser, study_factory, annotators):
    study = study_factory()
    base = live_server.url
    page = browser.new_context().new_page()
    page.set_default_timeout(30_000)
    login(page, base, annotators[0].username)  # the home page is the entry before the task
    _open_annotate(page, base, study)
    judged = _token(page)
    assert _press(page, "1").status == 200
    page.wait_for_selector('#done-count:text-is("1")')
    current = _token(page)
    assert current != judged
    page.go_back()
    page.wait_for_url(f"{base}/")
    response = page.go_forward()
    page.wait_for_selector("#task-form")
    # the page came from the server again (no-store), so it shows the open task, not the judged one
    assert response is not None and response.status == 200
    assert _token(page) == current
    assert page.inner_text("#done-count") == "1"
    assert Judgment.objects.filter(assignment__token=judged).count() == 1
