"""Active time on a task, in a real headless Chromium: a stretch without input longer than
EVALSITE_IDLE_SECONDS is not counted; time spent moving the pointer is."""
import pytest

from annotation.models import Judgment

from .conftest import login
from .test_fetch_ahead import _study

pytestmark = pytest.mark.django_db(transaction=True)


def test_idle_stretches_are_left_out_of_active_time(live_server, browser, evaluator, annotators, settings):
    settings.EVALSITE_IDLE_SECONDS = 1
    study = _study(evaluator, annotators)
    context = browser.new_context(viewport={"width": 1366, "height": 768})
    context.set_default_timeout(30_000)
    page = context.new_page()
    login(page, live_server.url, annotators[0].username)
    page.goto(f"{live_server.url}/studies/{study.pk}/annotate/")
    page.wait_for_selector("#task[data-idle-seconds='1']")

    page.wait_for_timeout(3500)  # away: no input at all
    page.keyboard.press("1")
    page.wait_for_selector("#task-ahead", state="attached")
    idle = Judgment.objects.get()
    on_server = (idle.submitted_at - idle.served_at).total_seconds()
    assert on_server > 3.4
    assert 900 <= idle.active_ms <= 1600  # the first second of the stretch counts, the rest does not

    for _ in range(7):  # working: the pointer moves every half second
        page.mouse.move(200 + _ * 10, 300)
        page.wait_for_timeout(500)
    page.keyboard.press("2")
    page.wait_for_function("() => document.querySelectorAll('#undo-form').length === 1 && "
                           "!document.getElementById('task').hasAttribute('data-sending')")
    busy = Judgment.objects.latest("id")
    assert busy.active_ms >= 3300
    context.close()
