"""Image tasks in a real headless Chromium, by keyboard: a blind pair of images voted on, the
lightbox opened with Enter, zoomed with +, panned with the arrows and by dragging with the mouse,
closed with Escape (the focus comes back), and a Likert image rated with a failure tag; the
judgments are stored; no CSP violation."""
import time

import pytest
from playwright.sync_api import expect

from annotation.models import Assignment, Judgment
from tests.helpers.images import make_image_study

from .conftest import login
from .test_csp import WATCH_VIOLATIONS

pytestmark = pytest.mark.django_db(transaction=True)

VIEWPORT = {"width": 1366, "height": 768}


def _open(browser, base, user, study):
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(30_000)
    context.add_init_script(WATCH_VIOLATIONS)
    page = context.new_page()
    login(page, base, user.username)
    assert page.goto(f"{base}/studies/{study.pk}/annotate/").status == 200
    page.wait_for_selector("#task-form")
    return context, page


def _until(page, script: str, timeout: float = 15.0):
    """Poll ``script`` from Python (wait_for_function's polling evaluates strings in the page,
    which the site's CSP forbids) until it is truthy; its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = page.evaluate(script)
        if value or time.monotonic() > deadline:
            assert value, f"timed out waiting for {script}"
            return value
        time.sleep(0.05)


def _loaded_widths(page) -> list[int]:
    """The natural widths of the task images on screen (0: the image did not load)."""
    _until(page, "Array.from(document.querySelectorAll('#task-form .task-image')).every(i => i.complete)")
    return page.evaluate("Array.from(document.querySelectorAll('#task-form .task-image')).map(i => i.naturalWidth)")


def _image_box(page) -> dict:
    """The lightbox image's box on screen once it stands still (its transform has a short transition)."""
    box = page.locator("#lightbox-image").bounding_box()
    for _ in range(100):
        time.sleep(0.05)
        again = page.locator("#lightbox-image").bounding_box()
        if again == box:
            return box
        box = again
    raise AssertionError("the lightbox image kept moving")


def _drag_pans_the_zoomed_image(page) -> None:
    """A mouse drag moves a zoomed image by the pointer's travel, on top of the arrow keys' pan;
    at zoom 1 a drag moves nothing."""
    before = _image_box(page)
    x, y = before["x"] + before["width"] / 2, before["y"] + before["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x - 30, y + 10, steps=3)
    assert page.evaluate("document.getElementById('lightbox').classList.contains('lightbox-dragging')")
    page.mouse.move(x - 100, y + 45, steps=5)
    page.mouse.up()
    assert not page.evaluate("document.getElementById('lightbox').classList.contains('lightbox-dragging')")
    transform = page.evaluate("document.getElementById('lightbox-image').style.transform")
    assert "translate(-60px, 45px)" in transform, transform  # 40 from the arrow key, -100 dragged
    after = _image_box(page)
    assert after["x"] - before["x"] == pytest.approx(-100, abs=1)
    assert after["y"] - before["y"] == pytest.approx(45, abs=1)
    assert after["width"] == pytest.approx(before["width"], abs=0.5)  # moved, not zoomed
    expect(page.locator("dialog#lightbox")).to_have_attribute("data-zoom", "1.25")

    page.keyboard.press("0")  # back to zoom 1 (and the centre): a drag now leaves the image alone
    still = _image_box(page)
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 80, y + 80, steps=4)
    page.mouse.up()
    assert "translate(0px, 0px)" in page.evaluate("document.getElementById('lightbox-image').style.transform")
    assert _image_box(page) == still
    expect(page.locator("dialog#lightbox")).to_have_attribute("open", "")  # a drag is not a close
    page.keyboard.press("+")  # zoomed again, as the rest of the test expects
    expect(page.locator("dialog#lightbox")).to_have_attribute("data-zoom", "1.25")


def test_an_image_pair_is_judged_by_keyboard_with_the_lightbox(live_server, browser, evaluator, annotators):
    study = make_image_study(evaluator, annotators=annotators[:1], n_prompts=3)
    context, page = _open(browser, live_server.url, annotators[0], study)
    assert _loaded_widths(page) == [32, 32]  # both thumbnails, served to the annotator holding the task
    assert page.locator("#side-a .task-image").get_attribute("alt") == "Image A"
    assert page.locator("#side-b .task-image").get_attribute("alt") == "Image B"

    thumb = page.locator("#side-b .task-image")
    thumb.focus()
    page.keyboard.press("Enter")
    dialog = page.locator("dialog#lightbox")
    expect(dialog).to_have_attribute("open", "")
    _until(page, "document.getElementById('lightbox-image').complete")
    assert page.evaluate("document.getElementById('lightbox-image').naturalWidth") == 64  # the full image
    page.keyboard.press("+")
    expect(dialog).to_have_attribute("data-zoom", "1.25")
    page.keyboard.press("ArrowLeft")  # pans when zoomed
    assert "translate(40px, 0px)" in page.evaluate("document.getElementById('lightbox-image').style.transform")
    _drag_pans_the_zoomed_image(page)
    page.keyboard.press("1")  # a vote key, swallowed while the lightbox is open
    page.keyboard.press("0")  # resets the zoom
    expect(dialog).to_have_attribute("data-zoom", "1")
    assert Judgment.objects.count() == 0
    page.keyboard.press("Escape")
    expect(dialog).not_to_have_attribute("open", "")
    assert page.evaluate("document.activeElement.getAttribute('alt')") == "Image B"  # the focus is back

    held = Assignment.objects.get(annotator=annotators[0], slot=0)
    page.keyboard.press("1")  # A is better
    expect(page.locator("#done-count")).to_have_text("1")
    page.wait_for_selector("#task:not([data-sending])")
    judgment = Judgment.objects.get()
    assert judgment.assignment_id == held.pk
    assert judgment.outcome == ("a" if held.left_is_a else "b")
    assert _loaded_widths(page) == [32, 32]  # the task fetched ahead shows its images too
    assert page.evaluate("window.__cspViolations") == []
    context.close()


def test_a_likert_image_is_rated_and_tagged_by_keyboard(live_server, browser, evaluator, annotators):
    study = make_image_study(evaluator, annotators=annotators[:1], n_prompts=2, task_kinds="likert")
    context, page = _open(browser, live_server.url, annotators[0], study)
    assert _loaded_widths(page) == [32]
    page.locator("#side-a .task-image").focus()
    page.keyboard.press("Enter")  # opens the image; it does not submit the ratings
    expect(page.locator("dialog#lightbox")).to_have_attribute("open", "")
    page.keyboard.press("Escape")
    expect(page.locator("dialog#lightbox")).not_to_have_attribute("open", "")
    assert Judgment.objects.count() == 0

    page.keyboard.press("4")  # relevance: Mostly; the focus moves on
    page.keyboard.press("2")  # creativity: Plain; the focus is on Submit
    page.keyboard.press("q")  # toggles "Hands"
    assert page.locator("input[name=tag][value=hands]").is_checked()
    page.keyboard.press("Enter")
    expect(page.locator("#done-count")).to_have_text("1")
    page.wait_for_selector("#task:not([data-sending])")
    judgment = Judgment.objects.get()
    assert (judgment.ratings, judgment.tags) == ({"relevance": 4, "creativity": 2}, ["hands"])
    assert page.evaluate("window.__cspViolations") == []
    context.close()
