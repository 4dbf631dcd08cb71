"""The annotator's experience in a real headless Chromium, by keyboard only: the study's
instructions, Start, a vote, Undo (U), the vote again, and Skip (S) with a reason; no CSP violation."""
import pytest
from playwright.sync_api import expect

from annotation import services
from annotation.models import Judgment, Skip, StudyMember
from tests.conftest import imported_jsonl

from .conftest import login
from .test_csp import WATCH_VIOLATIONS

pytestmark = pytest.mark.django_db(transaction=True)


def test_start_vote_undo_vote_again_and_skip_by_keyboard(live_server, browser, evaluator, annotators):
    study = services.study_create(
        name="Experience study", created_by=evaluator, annotators=annotators[:1], prompts_filename="p.csv",
        prompts_data=b"id,prompt\nq0,Name a prime.\nq1,Name a colour.\nq2,Name a city.\n")
    for n, name in enumerate(("alpha-model", "beta-model")):
        cand = services.candidate_create(study=study, name=name, backend="imported", spec={})
        services.outputs_import(candidate=cand, filename="o.jsonl",
                                data=imported_jsonl({f"q{i}": f"Answer {n}.{i}" for i in range(3)}))
    services.study_set_instructions(study=study, text="## Be fair\n\nPick the **more correct** answer.",
                                    actor=evaluator)
    context = browser.new_context(viewport={"width": 1366, "height": 768})
    context.set_default_timeout(30_000)
    context.add_init_script(WATCH_VIOLATIONS)
    page = context.new_page()
    base = live_server.url
    login(page, base, annotators[0].username)

    page.goto(f"{base}/studies/{study.pk}/annotate/")
    page.wait_for_url(f"{base}/studies/{study.pk}/annotate/instructions/")
    expect(page.locator("#instructions-text h2")).to_have_text("Be fair")
    assert page.evaluate("document.activeElement.id") == "start"
    page.keyboard.press("Enter")  # Start
    page.wait_for_url(f"{base}/studies/{study.pk}/annotate/")  # loaded, annotate.js included
    assert StudyMember.objects.get(study=study, user=annotators[0]).instructions_seen_at is not None
    first = page.locator("#task-form").get_attribute("action")

    page.keyboard.press("1")  # vote
    expect(page.locator("#done-count")).to_have_text("1")
    expect(page.locator("#undo-button")).to_be_visible()
    assert Judgment.objects.count() == 1
    page.keyboard.press("u")  # undo: the same task again
    expect(page.locator("#done-count")).to_have_text("0")
    assert page.locator("#task-form").get_attribute("action") == first
    assert page.locator("#undo-button").count() == 0 and Judgment.objects.count() == 0

    page.keyboard.press("2")  # vote again, the other way
    expect(page.locator("#done-count")).to_have_text("1")
    page.wait_for_selector("#task:not([data-sending])")  # the vote's answer is in
    judgment = Judgment.objects.get()
    assert f"/tasks/{judgment.assignment.token}/" == first
    second = page.locator("#task-form").get_attribute("action")

    page.keyboard.press("s")  # skip: the reasons open, the focus on the first
    expect(page.locator("#skip-form")).to_be_visible()
    page.keyboard.press("4")  # "Other": the focus moves to the words box
    assert page.evaluate("document.activeElement.id") == "skip-note"
    page.keyboard.type("The output is cut off")
    page.keyboard.press("Enter")
    expect(page.locator("#task-form")).not_to_have_attribute("action", second)
    skip = Skip.objects.get()
    assert (skip.reason, skip.note) == ("other", "The output is cut off")
    assert f"/tasks/{skip.assignment.token}/" == second
    expect(page.locator("#done-count")).to_have_text("1")  # a skip is not a judgment
    third = page.locator("#task-form").get_attribute("action")

    page.click("#instructions-link")  # the instructions stay reachable
    page.wait_for_url(f"{base}/studies/{study.pk}/annotate/instructions/")
    expect(page.locator("#instructions-text h2")).to_have_text("Be fair")
    page.keyboard.press("Enter")
    page.wait_for_url(f"{base}/studies/{study.pk}/annotate/")
    assert page.locator("#task-form").get_attribute("action") == third  # back on the task held
    assert page.evaluate("window.__cspViolations") == []
    context.close()
