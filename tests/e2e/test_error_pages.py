"""Error pages and refused votes in a real headless Chromium: the pages are styled in the layout under
the CSP, and a vote refused with 403 (the annotator was excluded meanwhile) is said on the task."""
import pytest

from annotation import services
from annotation.models import Judgment

from .conftest import login
from .test_csp import WATCH_VIOLATIONS

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_404_page_is_styled_in_the_layout_without_a_policy_violation(live_server, browser, annotators):
    context = browser.new_context()
    context.add_init_script(WATCH_VIOLATIONS)
    page = context.new_page()
    page.set_default_timeout(30_000)
    for signed_in in (False, True):
        if signed_in:
            login(page, live_server.url, annotators[0].username)
        response = page.goto(f"{live_server.url}/studies/424242/annotate/")
        if not signed_in:  # the sign-in page first; the address itself is then a 404
            assert response.status == 200 and "/login/" in page.url
            continue
        assert response.status == 404
        assert page.inner_text("h1") == "Page not found"
        assert page.inner_text(".error-page p") == "No study with id 424242"
        assert page.locator(".topbar").evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(29, 35, 48)"
        assert page.inner_text(".who") == annotators[0].username
    response = page.goto(f"{live_server.url}/no/such/page/")
    assert response.status == 404 and page.inner_text("h1") == "Page not found"
    assert page.evaluate("window.__cspViolations") == []
    context.close()


def test_a_vote_refused_with_403_shows_the_problem_on_the_task(live_server, browser, study_factory, evaluator,
                                                              annotators):
    study = study_factory()
    page = browser.new_page()
    page.set_default_timeout(30_000)
    login(page, live_server.url, annotators[0].username)
    page.goto(f"{live_server.url}/studies/{study.pk}/annotate/")
    page.wait_for_selector("#task-form")
    side_a = page.inner_text("#side-a")
    services.member_exclude(study=study, user=annotators[0], actor=evaluator)

    with page.expect_response(lambda r: "/tasks/" in r.url and r.request.method == "POST") as info:
        page.keyboard.press("1")
    assert info.value.status == 403
    problem = page.wait_for_selector("#task-problem[role=alert]")
    assert problem.inner_text() == ("Not recorded (403): you may not judge in this study any more. "
                                    "Reload the page for your current task.")
    # the task stays as it was (the 403 page is not swapped in), and nothing was recorded
    assert page.inner_text("#side-a") == side_a and page.locator(".error-page").count() == 0
    assert not Judgment.objects.filter(study=study).exists()
    page.reload()
    assert page.inner_text("h1#error-title") == "Not allowed"
    assert page.inner_text(".error-page p >> nth=0") == "You have been excluded from this study."
