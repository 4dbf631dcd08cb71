"""Texts are rendered to sanitised HTML once, when written, and the annotate page prints that HTML."""
import csv
import importlib
import io
import re

import pytest
from django.apps import apps
from django.urls import reverse

from annotation import markdown, services
from annotation.models import Output, Prompt
from tests.conftest import imported_jsonl, on_screen

pytestmark = pytest.mark.django_db

HOSTILE = '<script>alert(1)</script> **bold** [x](javascript:alert(2)) <img src=x onerror="alert(3)">'


def _assert_stored(rows) -> None:
    rows = list(rows)
    assert rows
    for row in rows:
        assert row.html == markdown.render(row.text), row.text
        # every tag is one Markdown makes, with no event handler and no script link
        for name, attrs in re.findall(r"<([a-zA-Z0-9]+)([^>]*)>", row.html):
            assert name in markdown.ALLOWED_TAGS, row.html
            assert not re.search(r"\bon[a-z]+=|javascript:", attrs, re.I), row.html
        assert "<script" not in row.html.lower()


def test_prompt_upload_and_output_import_store_the_rendered_html(study_factory):
    study = study_factory()
    _assert_stored(study.prompts.all())
    _assert_stored(study.outputs.all())
    assert study.prompts.get(external_id="p1").html == "<p>How do I reset my password?</p>\n"


def test_hostile_text_is_stored_sanitised_on_prompt_upload_import_and_reimport(study_factory, evaluator):
    study = study_factory(candidates=("alpha-model", "beta-model"))
    upload = io.StringIO()
    csv.writer(upload).writerows([["id", "prompt"], ["evil", HOSTILE]])
    services.prompts_import(study=study, data=upload.getvalue().encode(), filename="more.csv", actor=evaluator)
    evil = study.prompts.get(external_id="evil")
    _assert_stored([evil])
    assert "&lt;script&gt;" in evil.html and "<strong>bold</strong>" in evil.html

    alpha = study.candidates.get(name="alpha-model")
    ids = list(study.prompts.values_list("external_id", flat=True))
    before = {o.pk: o.html for o in alpha.outputs.all()}
    # a re-import replaces texts: their stored HTML is replaced with them
    services.outputs_import(candidate=alpha, data=imported_jsonl({pid: f"{HOSTILE} for *{pid}*" for pid in ids}),
                            filename="again.jsonl", actor=evaluator)
    after = list(alpha.outputs.all())
    _assert_stored(after)
    assert {o.pk for o in after} >= set(before)
    assert all(o.html != before.get(o.pk) and "<em>" in o.html for o in after)


def test_battles_import_stores_the_prompt_html(study_factory):
    study = study_factory(candidates=("alpha-model", "beta-model"))
    services.battles_import(study=study, model_a=["m1"], model_b=["m2"], winner=["model_a"], source="arena *dump*")
    battle = study.prompts.get(text__startswith="Battle 1 ")
    assert battle.html == markdown.render(battle.text) and "<em>dump</em>" in battle.html


def test_the_annotate_page_prints_the_stored_html_not_a_new_rendering(client, study_factory, annotators):
    study = study_factory(candidates=("alpha-model", "beta-model"))
    # A marker only the stored column holds: seen on the page means the page printed the column.
    Output.objects.filter(study=study).update(html='<p class="stored">from the column</p>')
    Prompt.objects.filter(study=study).update(html="<p>prompt from the column</p>")
    client.force_login(annotators[0])
    for _ in range(2):  # a new lease (the vote path's SQL), then the lease held (the ORM's)
        page = on_screen(client.get(reverse("annotation:annotate", args=[study.pk])).content.decode())
        assert page.count('<p class="stored">from the column</p>') == 2
        assert "<p>prompt from the column</p>" in page


def test_a_row_without_stored_html_is_rendered_by_the_page_and_stays_escaped(client, study_factory, annotators):
    study = study_factory(candidates=("alpha-model", "beta-model"))
    # as if written by a path that did not store the HTML
    Output.objects.filter(study=study).update(text=HOSTILE, html="")
    Prompt.objects.filter(study=study).update(html="")
    client.force_login(annotators[0])
    response = client.get(reverse("annotation:annotate", args=[study.pk]), HTTP_HX_REQUEST="true")
    page = on_screen(response.content.decode())
    assert response.status_code == 200
    sides = re.findall(r'<div class="text md output" id="side-[ab]"[^>]*>(.*?)</div></section>', page, re.S)
    assert sides == [markdown.render(HOSTILE)] * 2
    assert "<script>alert" not in page and "&lt;script&gt;" in page
    assert re.search(r'id="prompt-text">(<p>[^<]+\?</p>\n)</div>', page)


def test_the_migration_renders_rows_written_before_the_column(study_factory):
    study = study_factory(candidates=("alpha-model", "beta-model"))
    Output.objects.filter(study=study).update(html="")
    Prompt.objects.filter(study=study).update(html="")
    migration = importlib.import_module("annotation.migrations.0011_rendered_html")
    migration.BATCH, batch = 3, migration.BATCH  # several batches over 8 outputs and 4 prompts
    try:
        migration.fill_rendered_html(apps, None)
    finally:
        migration.BATCH = batch
    _assert_stored(study.prompts.all())
    _assert_stored(study.outputs.all())
    assert not Output.objects.filter(study=study, html="").exclude(text="").exists()
