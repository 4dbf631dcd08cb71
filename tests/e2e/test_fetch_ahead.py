"""The next task is fetched ahead, in a real headless Chromium: a vote shows it at once, before
the server has answered (the vote's request is held back here to prove it), and the answer then
brings the undo bar and the task after it without disturbing what the annotator started typing;
a refused vote puts the server's answer on screen instead."""
import pytest
from playwright.sync_api import expect

from annotation import services
from annotation.models import Assignment, Judgment, Unit
from tests.conftest import imported_jsonl

from .conftest import login
from .test_csp import WATCH_VIOLATIONS

pytestmark = pytest.mark.django_db(transaction=True)


def _study(evaluator, annotators):
    study = services.study_create(
        name="Ahead study", created_by=evaluator, annotators=annotators[:1], prompts_filename="p.csv",
        prompts_data=b"id,prompt\nq0,Name a prime.\nq1,Name a colour.\nq2,Name a city.\nq3,Name a river.\n")
    for n, name in enumerate(("alpha-model", "beta-model")):
        cand = services.candidate_create(study=study, name=name, backend="imported", spec={})
        services.outputs_import(candidate=cand, filename="o.jsonl",
                                data=imported_jsonl({f"q{i}": f"Answer {n}.{i}" for i in range(4)}))
    return study


def _open(browser, base, user, study):
    context = browser.new_context(viewport={"width": 1366, "height": 768})
    context.set_default_timeout(30_000)
    context.add_init_script(WATCH_VIOLATIONS)
    page = context.new_page()
    login(page, base, user.username)
    page.goto(f"{base}/studies/{study.pk}/annotate/")
    page.wait_for_selector("#task-form")
    return context, page


def _ahead(page) -> dict:
    return page.evaluate("""() => {
        const t = document.getElementById('task-ahead');
        return t ? {prompt: t.content.querySelector('#prompt-text').textContent.trim(),
                    action: t.content.querySelector('#task-form').getAttribute('action')} : null;
    }""")


def _slot(annotator, slot: int) -> str:
    return Assignment.objects.get(annotator=annotator, slot=slot, submitted_at__isnull=True, released=False).token


def test_a_vote_shows_the_next_task_before_the_server_answers(live_server, browser, evaluator, annotators):
    study = _study(evaluator, annotators)
    annotator = annotators[0]
    context, page = _open(browser, live_server.url, annotator, study)
    first = page.locator("#task-form").get_attribute("action")
    ahead = _ahead(page)
    assert ahead and ahead["action"] == f"/tasks/{_slot(annotator, 1)}/" and first == f"/tasks/{_slot(annotator, 0)}/"

    held = []  # the vote's request, kept from the server until the test lets it go
    page.route("**/tasks/*/", lambda route: held.append(route) if route.request.method == "POST"
               else route.continue_())
    page.keyboard.press("1")
    expect(page.locator("#prompt-text")).to_have_text(ahead["prompt"])  # on screen at once
    assert page.locator("#task-form").get_attribute("action") == ahead["action"]
    page.wait_for_function("() => true")  # let the route handler record the request
    assert len(held) == 1 and not Judgment.objects.exists()  # the vote has not reached the server yet
    page.locator("textarea[name=rationale]").fill("started before the answer came")

    held[0].continue_()
    expect(page.locator("#undo-form")).to_be_visible()
    page.wait_for_function("() => document.getElementById('task-ahead') !== null")
    judgment = Judgment.objects.get()
    assert f"/tasks/{judgment.assignment.token}/" == first
    # the task on screen is the one the server now counts as on screen, served from the vote on
    promoted = Assignment.objects.get(token=_slot(annotator, 0))
    assert f"/tasks/{promoted.token}/" == ahead["action"] and promoted.leased_at >= judgment.submitted_at
    assert page.locator("textarea[name=rationale]").input_value() == "started before the answer came"
    assert page.locator("#done-count").text_content() == "1"
    following = _ahead(page)
    assert following and following["action"] == f"/tasks/{_slot(annotator, 1)}/"
    assert following["action"] not in (first, ahead["action"])
    page.unroute("**/tasks/*/")

    # the next vote, with the typed reason, lands on the task that was fetched ahead
    page.locator("#task-form button[value=right]").click()
    expect(page.locator("#prompt-text")).to_have_text(following["prompt"])
    page.wait_for_function("() => document.getElementById('task-ahead') !== null")
    expect(page.locator("#done-count")).to_have_text("2")
    second = Judgment.objects.get(assignment__token=ahead["action"].split("/")[2])
    assert second.rationale == "started before the answer came"
    html = page.content()
    for name in ("alpha-model", "beta-model"):
        assert name not in html
    assert page.evaluate("window.__cspViolations") == []
    context.close()


def test_a_vote_refused_by_the_server_puts_its_answer_on_screen(live_server, browser, evaluator, annotators):
    study = _study(evaluator, annotators)
    annotator = annotators[0]
    context, page = _open(browser, live_server.url, annotator, study)
    first = page.locator("#task-form").get_attribute("action")
    ahead = _ahead(page)
    # someone else judged this task's place away meanwhile: the lease expired and was taken
    token = first.split("/")[2]
    Assignment.objects.filter(token=token).update(released=True)
    Unit.objects.filter(assignments__token=token).update(taken=0, needed=0)
    page.keyboard.press("2")
    expect(page.locator(".error-box")).to_contain_text("someone else has taken it")
    # the server's answer is on screen: the task it counts as on screen, not a guess
    assert page.locator("#task-form").get_attribute("action") == f"/tasks/{_slot(annotator, 0)}/"
    assert ahead["action"] == f"/tasks/{_slot(annotator, 0)}/"
    assert not Judgment.objects.exists()
    context.close()
