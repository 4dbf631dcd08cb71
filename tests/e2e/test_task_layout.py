"""The annotate page in a real headless Chromium: outputs as sanitised Markdown (a script in an
output never runs), a long prompt collapsed behind "Show all", and, on a laptop (1366x768) and a
phone (390x844), both outputs and the vote bar on screen, the bar staying there while outputs scroll."""
import csv
import io
import json

import pytest

from annotation import services
from annotation.models import Judgment, Study

from .conftest import login

pytestmark = pytest.mark.django_db(transaction=True)

LONG_PROMPT = "\n".join(
    ["# Write a function", "", "Write a Python function that returns the median of a list. Requirements:", ""]
    + [f"- requirement {i}: handle case number {i} without crashing and explain it" for i in range(1, 31)]
    + ["", "THE LAST LINE OF THE PROMPT"]
)
CODE = "```python\ndef median(xs):\n    xs = sorted(xs)\n    if len(xs) % 2:\n        return xs[len(xs) // 2]\n```"
LONG_OUTPUT = "\n\n".join([CODE, "| n | median |\n|--:|--:|\n| 3 | 2 |"] + [f"Paragraph {i} of the explanation." for i in range(80)])
HOSTILE_OUTPUT = ('Before <script>window.pwned=1</script> middle <img src=x onerror="window.pwned=1"> after\n\n'
                  "[link](javascript:window.pwned=1)\n\n" + CODE)
# Two outputs that are not near-identical (such a pair is a tie by rule and never served)
OTHER_HOSTILE_OUTPUT = "The other model answers in its own words, at some length, before the same tricks.\n\n" + HOSTILE_OUTPUT

LAPTOP = {"width": 1366, "height": 768}
PHONE = {"width": 390, "height": 844}


def _study(evaluator, annotators, prompts: list[str], outputs: tuple[str, str]) -> Study:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["id", "prompt"])
    writer.writerows((f"q{i}", text) for i, text in enumerate(prompts))
    study = services.study_create(name="Layout study", created_by=evaluator, prompts_data=buffer.getvalue().encode(),
                                  prompts_filename="p.csv", annotators=annotators)
    for name, text in zip(("alpha-model", "beta-model"), outputs):
        candidate = services.candidate_create(study=study, name=name, backend="imported", spec={})
        data = "\n".join(json.dumps({"prompt_id": f"q{i}", "output": text}) for i in range(len(prompts)))
        services.outputs_import(candidate=candidate, data=data.encode(), filename="out.jsonl")
    return study


def _open(browser, base: str, username: str, study: Study, viewport: dict):
    context = browser.new_context(viewport=viewport)
    context.set_default_timeout(30_000)
    page = context.new_page()
    login(page, base, username)
    response = page.goto(f"{base}/studies/{study.pk}/annotate/")
    assert response.status == 200
    page.wait_for_selector("#task-form")
    return context, page


def _box(page, selector: str) -> dict:
    box = page.locator(selector).bounding_box()
    assert box is not None, f"{selector} is not displayed"
    return box


def _assert_bar_on_screen(page, viewport: dict) -> dict:
    bar = _box(page, "#vote-bar")
    assert bar["y"] >= 0 and bar["y"] + bar["height"] <= viewport["height"] + 0.5, (bar, viewport)
    return bar


def _assert_top_on_screen_above_the_bar(page, selector: str, bar: dict) -> dict:
    box = _box(page, selector)
    # the top and at least two lines of text are visible, not hidden behind the sticky bar
    assert box["y"] >= 0 and box["y"] + 40 <= bar["y"], (selector, box, bar)
    return box


def test_a_script_in_an_output_is_shown_as_text_and_never_runs(live_server, browser, evaluator, annotators):
    study = _study(evaluator, annotators[:1], ["Hello?"], (HOSTILE_OUTPUT, OTHER_HOSTILE_OUTPUT))
    context, page = _open(browser, live_server.url, annotators[0].username, study, LAPTOP)
    page.wait_for_load_state("networkidle")

    assert page.evaluate("typeof window.pwned") == "undefined"
    assert page.evaluate("document.querySelectorAll('#task script, #task img, #task [onerror]').length") == 0
    assert page.locator("#task a").count() == 0  # the javascript: link stayed text
    assert "[link](javascript:window.pwned=1)" in page.inner_text("#side-b")
    side_a = page.inner_text("#side-a")
    assert '<script>window.pwned=1</script>' in side_a and '<img src=x onerror="window.pwned=1">' in side_a

    # the code block keeps its indentation, in a monospace font
    code = page.locator("#side-a pre code")
    assert "    xs = sorted(xs)\n    if len(xs) % 2:\n        return" in code.inner_text()
    assert "monospace" in code.evaluate("e => getComputedStyle(e).fontFamily")

    # judging still works, and still nothing ran
    with page.expect_response(lambda r: "/tasks/" in r.url and r.request.method == "POST") as vote:
        page.keyboard.press("3")
    assert vote.value.status == 200
    page.wait_for_selector('#done-count:text-is("1")')
    assert page.evaluate("typeof window.pwned") == "undefined"
    assert Judgment.objects.filter(study=study).count() == 1
    context.close()


@pytest.mark.parametrize("viewport", [LAPTOP, PHONE], ids=["1366x768", "390x844"])
def test_the_outputs_and_the_vote_bar_are_on_screen_under_a_collapsed_long_prompt(
        live_server, browser, evaluator, annotators, viewport):
    study = _study(evaluator, annotators[:1], [LONG_PROMPT, LONG_PROMPT.replace("a function", "another function")], (LONG_OUTPUT, LONG_OUTPUT.replace("Paragraph", "Section")))
    context, page = _open(browser, live_server.url, annotators[0].username, study, viewport)

    toggle = page.locator("#prompt-toggle")
    assert toggle.is_visible() and toggle.inner_text() == "Show all"
    assert toggle.get_attribute("aria-expanded") == "false"
    prompt = _box(page, "#prompt-text")
    assert prompt["height"] < 130, prompt
    last_line = page.locator("#prompt-text p:last-child")
    assert last_line.inner_text() == "THE LAST LINE OF THE PROMPT"
    assert _box(page, "#prompt-text p:last-child")["y"] > prompt["y"] + prompt["height"]  # cut off

    bar = _assert_bar_on_screen(page, viewport)
    a = _assert_top_on_screen_above_the_bar(page, "#side-a", bar)
    b = _assert_top_on_screen_above_the_bar(page, "#side-b", bar)
    if viewport is LAPTOP:
        assert a["y"] == b["y"] and a["x"] + a["width"] < b["x"], (a, b)  # side by side
        assert page.locator("#key-legend").is_visible()
        legend = page.inner_text("#key-legend")
        for words in ("1 A is better", "2 B is better", "3 tie", "4 both bad", "Esc"):
            assert words in legend, legend
    else:
        assert b["y"] >= a["y"] + a["height"], (a, b)  # stacked
        assert abs(a["x"] - b["x"]) < 1

    # scrolling an output (the wheel over it, then the page once the pane is at its end)
    page.mouse.move(a["x"] + a["width"] / 2, a["y"] + 20)
    for _ in range(6):
        page.mouse.wheel(0, 600)
        page.wait_for_timeout(100)
    assert page.evaluate("document.getElementById('side-a').scrollTop") > 0
    _assert_bar_on_screen(page, viewport)
    page.evaluate("window.scrollTo(0, document.documentElement.scrollHeight)")
    _assert_bar_on_screen(page, viewport)
    page.evaluate("window.scrollTo(0, 0)")

    # "Show all" is reached with Tab and opens with Enter; the whole prompt shows
    for _ in range(12):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "prompt-toggle":
            break
    assert page.evaluate("document.activeElement.id") == "prompt-toggle"
    page.keyboard.press("Enter")
    assert toggle.get_attribute("aria-expanded") == "true" and toggle.inner_text() == "Show less"
    expanded = _box(page, "#prompt-text")
    assert expanded["height"] > prompt["height"] * 3, (prompt, expanded)
    assert page.evaluate("(() => { const e = document.getElementById('prompt-text');"
                         " return e.scrollHeight <= e.clientHeight + 1; })()")
    line = _box(page, "#prompt-text p:last-child")
    assert expanded["y"] <= line["y"] and line["y"] + line["height"] <= expanded["y"] + expanded["height"] + 0.5
    _assert_bar_on_screen(page, viewport)
    page.keyboard.press("Enter")
    assert toggle.get_attribute("aria-expanded") == "false"

    # the next task, swapped in by htmx after a vote, starts collapsed again
    page.evaluate("document.activeElement.blur()")
    with page.expect_response(lambda r: "/tasks/" in r.url and r.request.method == "POST") as vote:
        page.keyboard.press("1")
    assert vote.value.status == 200
    page.wait_for_selector('#done-count:text-is("1")')
    page.wait_for_selector('#prompt-toggle[aria-expanded="false"]:visible')  # once htmx has settled the swap
    assert toggle.inner_text() == "Show all"
    assert _box(page, "#prompt-text")["height"] < 130
    _assert_bar_on_screen(page, viewport)
    context.close()


def test_a_short_prompt_shows_whole_without_a_toggle(live_server, browser, evaluator, annotators):
    study = _study(evaluator, annotators[:1], ["Hello?"], ("Hi!", "Hello there."))
    context, page = _open(browser, live_server.url, annotators[0].username, study, LAPTOP)
    assert page.locator("#prompt-toggle").is_hidden()
    assert page.inner_text("#prompt-text") == "Hello?"
    assert "collapsed" not in (page.get_attribute("#prompt-text", "class") or "")
    context.close()
