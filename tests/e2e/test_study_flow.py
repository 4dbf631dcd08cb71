"""The whole study in a real headless Chromium: set up, generate, judge by keyboard, read."""
import json

import pytest
from django.contrib.auth.models import Permission

from annotation.demo_data import DEMO_IMPORTED, DEMO_PROMPTS
from annotation.models import Judgment, Study

from .conftest import login

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_study_from_upload_to_leaderboard(celery_worker_process, live_server, browser, tiny_models,
                                            evaluator, annotators, manager, tmp_path):
    evaluator.user_permissions.add(Permission.objects.get(codename="add_study"))
    base = live_server.url
    page = browser.new_page()
    page.set_default_timeout(30_000)

    # the evaluator creates the study from the demo files
    login(page, base, evaluator.username)
    page.click("text=New study")
    page.fill("#id_name", "Support bots, browser test")
    page.set_input_files("#id_prompts", str(DEMO_PROMPTS))
    page.fill("#id_max_new_tokens", "8")
    page.check(f'input[name=annotators][value="{annotators[0].pk}"]')
    page.check(f'input[name=managers][value="{manager.pk}"]')
    page.click("button:has-text('Create study')")
    page.wait_for_selector("text=Study created with 40 prompts")
    study = Study.objects.get(name="Support bots, browser test")

    page.fill("#id_name", "tiny-causal")
    page.select_option("#id_backend", "transformers")
    page.fill("#id_spec", json.dumps({"model": tiny_models["causal"], "batch_size": 20}))
    page.click("button:has-text('Add candidate')")
    page.wait_for_selector("text=Candidate 'tiny-causal' added")
    page.fill("#id_name", "support-playbook")
    page.select_option("#id_backend", "imported")
    page.set_input_files("#id_outputs", str(DEMO_IMPORTED))
    page.click("button:has-text('Add candidate')")
    page.wait_for_selector("text=Candidate 'support-playbook' added")

    page.click("#start-generation")
    page.wait_for_selector("text=40 outputs queued for generation")
    # the progress table polls (htmx) until the worker has written every output
    page.wait_for_selector('#generation-state[data-finished="yes"]', timeout=180_000)
    assert page.inner_text('tr[data-candidate="tiny-causal"] .done-count') == "40"
    assert study.units.count() == 40

    # an annotator casts ten votes with the keyboard alone
    login(page, base, annotators[0].username)
    page.goto(f"{base}/studies/{study.pk}/annotate/")
    html = page.content()
    for secret in ("tiny-causal", "support-playbook", "transformers", "imported", tiny_models["causal"]):
        assert secret not in html
    for i, key in enumerate("1212121234"):
        page.wait_for_selector(f'#done-count:text-is("{i}")')
        page.keyboard.press(key)
    page.wait_for_selector('#done-count:text-is("10")')
    page.wait_for_selector("#task:not([data-sending])")  # the last vote's answer is in
    assert Judgment.objects.filter(study=study).count() == 10
    assert set(Judgment.objects.filter(study=study).values_list("outcome", flat=True)) >= {"a", "b", "tie", "both_bad"}

    # the manager reads the leaderboard the worker computed
    login(page, base, manager.username)
    page.goto(f"{base}/arena/studies/{study.pk}/leaderboard/")
    page.wait_for_selector("text=from 10 judgments", timeout=60_000)
    table = page.inner_text("#leaderboard-table")
    assert "tiny-causal" in table and "support-playbook" in table
    assert page.locator("svg.interval-plot").count() == 1
    page.screenshot(path=str(tmp_path / "leaderboard.png"), full_page=True)
