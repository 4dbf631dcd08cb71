"""The API's Swagger UI in a real headless Chromium: it renders every operation from our own static
files under the site's Content-Security-Policy (one exception, scoped to this page: data: images),
and "Try it out" works with the browser's session, CSRF token included."""
import pytest

from annotation.models import Judgment

from .conftest import login
from .test_csp import WATCH_VIOLATIONS

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_docs_page_runs_under_the_policy_and_tries_operations_with_the_session(
        live_server, browser, study_factory, annotators):
    study = study_factory()
    base = live_server.url
    context = browser.new_context(viewport={"width": 1366, "height": 768})
    context.add_init_script(WATCH_VIOLATIONS)
    page = context.new_page()
    page.set_default_timeout(30_000)
    outside = []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith((base, "data:")) else None)
    console = []
    page.on("console", lambda m: console.append(m.text) if "Content Security Policy" in m.text else None)

    login(page, base, annotators[0].username)
    response = page.goto(f"{base}/api/docs/")
    assert response.status == 200
    page.wait_for_selector(".opblock")
    assert page.locator(".opblock").count() == 12
    assert page.evaluate("window.__cspViolations") == [] and console == []
    assert outside == []

    # GET the next task with the session cookie, then POST a verdict (the page sends the CSRF token)
    task = page.locator("#operations-annotation-studies_tasks_next_retrieve")
    task.locator(".opblock-summary").click()
    task.locator("button.try-out__btn").click()
    task.locator("input[placeholder='study_id']").fill(str(study.pk))
    with page.expect_response(lambda r: "/tasks/next" in r.url) as got:
        task.locator("button.execute").click()
    assert got.value.status == 200
    token = got.value.json()["token"]
    vote = page.locator("#operations-annotation-tasks_judgment_create")
    vote.locator(".opblock-summary").click()
    vote.locator("button.try-out__btn").click()
    vote.locator("input[placeholder='token']").fill(token)
    vote.locator("textarea.body-param__text").fill('{"choice": "tie", "rationale": "from the docs"}')
    with page.expect_response(lambda r: "/judgment" in r.url) as sent:
        vote.locator("button.execute").click()
    assert sent.value.status == 201, sent.value.text()
    assert Judgment.objects.get(study=study).rationale == "from the docs"
    assert page.evaluate("window.__cspViolations") == [] and console == []
    context.close()
