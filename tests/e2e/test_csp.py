"""The Content-Security-Policy in a real headless Chromium: every page is sent with it, and the
pages (htmx included) work under it without the browser reporting a single violation."""
import pytest

from annotation.models import Judgment

from .conftest import login

pytestmark = pytest.mark.django_db(transaction=True)

# Collects the browser's own reports of blocked content, from before any page script runs.
WATCH_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__cspViolations.push(`${e.effectiveDirective} blocked ${e.blockedURI || "inline"} `
                              + `at ${e.sourceFile}:${e.lineNumber} ${e.sample}`);
});
"""


def _assert_policy(response) -> None:
    policy = response.headers.get("content-security-policy", "")
    for directive in ("default-src 'self'", "script-src 'self'", "frame-ancestors 'none'", "form-action 'self'",
                      "object-src 'none'", "base-uri 'none'"):
        assert directive in policy, policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy, policy


def _violations(page) -> list[str]:
    return page.evaluate("window.__cspViolations")


def test_the_pages_run_under_the_policy_without_a_violation(live_server, browser, study_factory, evaluator,
                                                           annotators, manager):
    study = study_factory()
    base = live_server.url
    context = browser.new_context()
    context.add_init_script(WATCH_VIOLATIONS)
    page = context.new_page()
    page.set_default_timeout(30_000)
    console = []
    page.on("console", lambda m: console.append(m.text) if "Content Security Policy" in m.text else None)

    _assert_policy(page.goto(f"{base}/login/"))
    assert _violations(page) == []
    login(page, base, evaluator.username)
    assert _violations(page) == []

    # the study page, whose progress table htmx polls and swaps in
    _assert_policy(page.goto(f"{base}/studies/{study.pk}/"))
    with page.expect_response(lambda r: "/progress/" in r.url) as poll:
        pass
    assert poll.value.status in (200, 286)  # 286: generation is over, htmx stops polling
    assert _violations(page) == []

    # the annotate page, and one vote sent by htmx with the CSRF token from the page
    login(page, base, annotators[0].username)
    _assert_policy(page.goto(f"{base}/studies/{study.pk}/annotate/"))
    page.wait_for_selector('#done-count:text-is("0")')
    with page.expect_response(lambda r: "/tasks/" in r.url and r.request.method == "POST") as vote:
        page.keyboard.press("1")
    assert vote.value.status == 200
    page.wait_for_selector('#done-count:text-is("1")')
    assert Judgment.objects.filter(study=study).count() == 1
    assert _violations(page) == []

    # the leaderboard, with its interval plot
    login(page, base, manager.username)
    _assert_policy(page.goto(f"{base}/arena/studies/{study.pk}/leaderboard/"))
    page.wait_for_selector("#leaderboard")
    assert _violations(page) == [] and console == []

    # and the watch does see a violation when there is one: an inline script is refused
    page.evaluate("() => { const s = document.createElement('script'); s.textContent = 'window.ran = 1';"
                  " document.body.appendChild(s); }")
    page.wait_for_function("window.__cspViolations.length > 0")
    assert page.evaluate("window.ran") is None
    assert _violations(page)[0].startswith("script-src-elem blocked inline")
    context.close()
