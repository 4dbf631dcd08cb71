"""Likert and tag tasks by keyboard in a real headless Chromium, on a laptop and a phone screen:
one digit per criterion (the focus moves on), letters toggle tags, Enter submits; no CSP violation."""
import pytest
from playwright.sync_api import expect

from annotation import services
from annotation.models import Judgment
from tests.conftest import imported_jsonl

from .conftest import login
from .test_csp import WATCH_VIOLATIONS
from tests.annotation.test_likert import CRITERIA, TAGS

pytestmark = pytest.mark.django_db(transaction=True)

VIEWPORTS = {"laptop": {"width": 1366, "height": 768}, "phone": {"width": 390, "height": 844}}


def _study(evaluator, annotators, kinds: str):
    study = services.study_create(
        name="Keyboard study", created_by=evaluator, prompts_data=b"id,prompt\nq0,Name a prime.\nq1,Name a colour.\n",
        prompts_filename="p.csv", annotators=annotators,
        tasks={"task_kinds": kinds, "likert_criteria": CRITERIA, "failure_tags": TAGS})
    for n, name in enumerate(("alpha-model", "beta-model")):
        cand = services.candidate_create(study=study, name=name, backend="imported", spec={})
        services.outputs_import(candidate=cand, filename="o.jsonl",
                                data=imported_jsonl({f"q{i}": f"**Answer {n}.{i}**" for i in range(2)}))
    return study


def _open(browser, base, user, study, viewport):
    context = browser.new_context(viewport=viewport)
    context.set_default_timeout(30_000)
    context.add_init_script(WATCH_VIOLATIONS)
    page = context.new_page()
    login(page, base, user.username)
    assert page.goto(f"{base}/studies/{study.pk}/annotate/").status == 200
    page.wait_for_selector("#task-form")
    return context, page


def _bar_on_screen(page, viewport):
    bar = page.locator("#vote-bar").bounding_box()
    assert bar is not None and bar["y"] >= 0 and bar["y"] + bar["height"] <= viewport["height"] + 0.5, bar


def _focused_criterion(page) -> str | None:
    return page.evaluate("(document.activeElement.closest('.criterion') || {}).dataset?.criterion || null")


@pytest.mark.parametrize("screen", VIEWPORTS)
def test_a_likert_task_is_rated_by_keyboard(live_server, browser, evaluator, annotators, screen):
    viewport = VIEWPORTS[screen]
    study = _study(evaluator, annotators[:1], "likert")
    context, page = _open(browser, live_server.url, annotators[0], study, viewport)
    _bar_on_screen(page, viewport)
    assert page.locator("#side-a strong").count() == 1  # the output is rendered Markdown
    assert page.locator("#side-b").count() == 0

    page.keyboard.press("2")  # factuality: Partly right; the focus moves to the next criterion
    assert page.locator("input[name=rating_factuality][value='2']").is_checked()
    assert _focused_criterion(page) == "style"
    page.keyboard.press("4")  # style: Good; the focus moves to the submit button
    assert page.locator("input[name=rating_style][value='4']").is_checked()
    assert page.evaluate("document.activeElement.id") == "likert-submit"
    page.keyboard.press("q")  # toggles "Hallucination"
    assert page.locator("input[name=tag][value=hallucination]").is_checked()
    page.keyboard.press("Enter")
    expect(page.locator("#done-count")).to_have_text("1")  # the task fetched ahead, on screen at once
    page.wait_for_selector("#task:not([data-sending])")  # and the vote's answer is in
    first = Judgment.objects.get()
    assert (first.ratings, first.tags) == ({"factuality": 2, "style": 4}, ["hallucination"])

    page.keyboard.press("n")  # factuality: not applicable
    page.keyboard.press("5")
    page.keyboard.press("Enter")
    expect(page.locator("#done-count")).to_have_text("2")
    page.wait_for_selector("#task:not([data-sending])")
    assert Judgment.objects.latest("id").ratings == {"factuality": None, "style": 5}
    _bar_on_screen(page, viewport)
    assert page.evaluate("window.__cspViolations") == []
    context.close()


@pytest.mark.parametrize("screen", VIEWPORTS)
def test_tags_are_chosen_by_keyboard_on_a_pairwise_task(live_server, browser, evaluator, annotators, screen):
    viewport = VIEWPORTS[screen]
    study = _study(evaluator, annotators[:1], "pairwise")
    context, page = _open(browser, live_server.url, annotators[0], study, viewport)
    legend = page.locator("#task-tags").inner_text()
    assert "Refused" in legend and "W" in legend
    page.keyboard.press("w")
    page.keyboard.press("w")
    page.keyboard.press("w")  # toggled three times: on
    page.keyboard.press("1")
    expect(page.locator("#done-count")).to_have_text("1")
    page.wait_for_selector("#task:not([data-sending])")
    judgment = Judgment.objects.get()
    assert judgment.tags == ["refused"] and judgment.outcome in ("a", "b")
    _bar_on_screen(page, viewport)
    assert page.evaluate("window.__cspViolations") == []
    context.close()
