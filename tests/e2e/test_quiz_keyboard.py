"""The qualification quiz by keyboard in a real headless Chromium: Enter starts it, a digit answers,
the feedback says what was expected, and passing leads to the first task; no CSP violation."""
import pytest
from playwright.sync_api import expect

from annotation import checks
from annotation.models import QuizAttempt, StudyMember, Unit

from .conftest import login
from .test_csp import WATCH_VIOLATIONS

pytestmark = pytest.mark.django_db(transaction=True)

GOLD = (b"prompt,a,b,better,note\n"
        b"p1,alpha-model,beta-model,b,alpha answers another question\n"
        b"p2,beta-model,gamma-model,a,gamma is rude\n")


def _key_for(attempt, index: int, right: bool) -> str:
    unit = Unit.objects.get(pk=attempt.items[index])
    left_better = (unit.expected["better"] == "a") == attempt.sides[index]
    return ("1" if left_better else "2") if right else ("2" if left_better else "1")


def test_the_quiz_is_taken_by_keyboard_and_passing_opens_the_tasks(live_server, browser, study_factory, annotators):
    study = study_factory()
    checks.checks_import(study=study, data=GOLD, filename="gold.csv")
    checks.checks_settings_update(study=study, check_rate=0, gold_pass=70, quiz_size=2, quiz_pass=50,
                                  quiz_attempts=2)
    context = browser.new_context(viewport={"width": 1366, "height": 768})
    context.set_default_timeout(30_000)
    context.add_init_script(WATCH_VIOLATIONS)
    page = context.new_page()
    login(page, live_server.url, annotators[0].username)
    page.goto(f"{live_server.url}/studies/{study.pk}/annotate/")
    page.wait_for_url(f"**/studies/{study.pk}/quiz/")
    expect(page.locator("#quiz-intro")).to_contain_text("2 questions")
    page.keyboard.press("Enter")  # the Start button has the focus
    page.wait_for_selector("#task-form")
    attempt = QuizAttempt.objects.get(study=study, user=annotators[0])

    page.keyboard.press(_key_for(attempt, 0, right=False))
    expect(page.locator("#quiz-feedback")).to_contain_text("Not quite.")
    expect(page.locator("#quiz-feedback")).to_contain_text("The expected answer: the")
    page.keyboard.press(_key_for(attempt, 1, right=True))
    expect(page.locator("#quiz-result")).to_contain_text("1 of 2 right: passed")
    page.locator("#quiz-go").focus()
    page.keyboard.press("Enter")
    page.wait_for_selector("#task-form")
    assert page.url.endswith(f"/studies/{study.pk}/annotate/")
    assert StudyMember.objects.get(study=study, user=annotators[0]).qualified_at is not None
    for name in ("alpha-model", "beta-model", "gamma-model"):
        assert name not in page.content()
    assert page.evaluate("window.__cspViolations") == []
    context.close()
