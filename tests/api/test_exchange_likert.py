"""Likert ratings, failure tags and rationales in the judgments file, out and back in with nothing lost.

A study with both kinds of task is judged with every kind of answer (points, "not applicable",
tags, rationales a spreadsheet would run); its export imports into a twin study with the same
prompts, candidates, criteria and tags, and the twin's export is the same file but for ids.
"""
from __future__ import annotations

import json

import pytest
from django.urls import reverse

from annotation import exchange, services
from annotation.models import Judgment, Unit
from tests.conftest import imported_jsonl

from .conftest import client_as
from .test_exchange import export, import_file, read_rows, state

pytestmark = pytest.mark.django_db

CRITERIA = [
    {"key": "factuality", "name": "Factuality", "scale": 3, "labels": ["Wrong", "Partly right", "Right"],
     "allow_na": True},
    {"key": "style", "name": "Style", "scale": 5, "labels": ["Very poor", "Poor", "Fair", "Good", "Very good"]},
]
TAGS = [{"key": "hallucination", "label": "Hallucination"}, {"key": "refused", "label": "Refused"},
        {"key": "unsafe", "label": "Unsafe"}]
CANDIDATES = ("alpha-model", "beta-model")
RATIONALES = ["Right but terse.", "=1+1", "", "-dull", "Zwei\nZeilen"]
TAG_SETS = [[], ["hallucination"], ["refused", "unsafe"], ["hallucination", "refused", "unsafe"]]


def make_study(evaluator, annotators, manager, *, order=CANDIDATES, name="Rated study", kinds="both",
               criteria=CRITERIA, tags=TAGS):
    study = services.study_create(
        name=name, created_by=evaluator, prompts_data=b"id,prompt\nq1,One?\nq2,Two?\nq3,Three?\n",
        prompts_filename="p.csv", overlap=2, annotators=annotators, managers=[manager],
        tasks={"task_kinds": kinds, "likert_criteria": criteria, "failure_tags": tags, "ask_rationale": "optional"})
    for cand in order:
        candidate = services.candidate_create(study=study, name=cand, backend="imported", spec={})
        n = CANDIDATES.index(cand)
        services.outputs_import(candidate=candidate, filename="out.jsonl", data=imported_jsonl(
            {f"q{i}": f"Variant {n} answer to q{i}" for i in (1, 2, 3)}))
    study.refresh_from_db()
    return study


def judge_everything(study, annotators) -> int:
    """Every task of every kind, answered by turns with varied points, "not applicable", tags and reasons."""
    n = 0
    busy = list(annotators)
    while busy:
        for annotator in list(busy):
            assignment = services.assignment_next(study=study, annotator=annotator)
            if assignment is None:
                busy.remove(annotator)
                continue
            answer = {"tags": TAG_SETS[n % len(TAG_SETS)], "rationale": RATIONALES[n % len(RATIONALES)],
                      "active_ms": 700 + n}
            if assignment.unit.kind == Unit.Kind.LIKERT:
                answer["ratings"] = {"factuality": None if n % 3 == 0 else 1 + n % 3, "style": 1 + n % 5}
            else:
                answer["choice"] = ("left", "right", "tie", "both_bad")[n % 4]
            services.judgment_submit(assignment=assignment, **answer)
            n += 1
    return n


def comparable(rows: list[dict]) -> list[tuple]:
    """Each row as text, each pair written alphabetically (its verdict turned with it), sorted."""
    flip = {"a": "b", "b": "a", "model_a": "model_b", "model_b": "model_a"}
    out = []
    for row in rows:
        row = {k: json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else
               "" if v is None else str(v).lower() if isinstance(v, bool) else str(v) for k, v in row.items()}
        if row["kind"] == "pairwise" and row["model_a"] > row["model_b"]:
            row["model_a"], row["model_b"] = row["model_b"], row["model_a"]
            row["outcome"] = flip.get(row["outcome"], row["outcome"])
            row["winner"] = flip.get(row["winner"], row["winner"])
        out.append(tuple(sorted(row.items())))
    return sorted(out)


def stored(study) -> list[tuple]:
    """What the database holds, in terms a second study can share: no ids."""
    rows = []
    for j in Judgment.objects.filter(study=study).select_related("unit__prompt", "unit__output_a__candidate",
                                                                  "unit__output_b__candidate", "annotator"):
        pair = [j.unit.output_a.candidate.name] + ([j.unit.output_b.candidate.name] if j.unit.output_b else [])
        rows.append((j.unit.kind, j.unit.prompt.external_id, tuple(sorted(pair)), j.annotator.username,
                     json.dumps(j.ratings, sort_keys=True), tuple(j.tags or ()), j.rationale, j.served_at,
                     j.submitted_at, j.active_ms))
    return sorted(rows)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_likert_ratings_tags_and_rationales_go_out_and_back_in_with_nothing_lost(
        evaluator, annotators, manager, fmt):
    first = make_study(evaluator, annotators, manager)
    assert Unit.objects.filter(study=first, kind="likert").count() == 6
    assert judge_everything(first, annotators) == 18  # 3 pairs and 6 single outputs, 2 annotators each
    body, _ = export(client_as(manager, "token"), first, format=fmt)
    rows = read_rows(body, fmt)
    assert len(rows) == 18
    likert = [r for r in rows if r["kind"] == "likert"]
    assert len(likert) == 12 and {r["kind"] for r in rows} == {"pairwise", "likert"}
    if fmt == "csv":
        assert list(rows[0]) == ["kind", "prompt_id", "sample_index", "model_a", "model_b", "shown_left", "outcome",
                                 "winner", "rating:factuality", "rating:style", "tags", "rationale", "served_at",
                                 "submitted_at", "active_ms", "annotator", "excluded"]
        assert {r["rating:factuality"] for r in likert} == {"na", "2", "3"}
        assert {r["rating:style"] for r in likert} <= {"1", "2", "3", "4", "5"}
        assert all(r["rating:factuality"] == r["rating:style"] == "" for r in rows if r["kind"] == "pairwise")
        assert {r["tags"] for r in rows} == {"", "hallucination", "refused;unsafe", "hallucination;refused;unsafe"}
        assert "'=1+1" in {r["rationale"] for r in rows} and "'-dull" in {r["rationale"] for r in rows}
    else:
        assert list(rows[0]) == list(exchange.COLUMNS)
        assert {r["ratings"]["factuality"] for r in likert} == {None, 2, 3}
        assert all(r["ratings"] is None and r["outcome"] in ("a", "b", "tie", "both_bad")
                   for r in rows if r["kind"] == "pairwise")
        assert {tuple(r["tags"]) for r in rows} == {tuple(t) for t in TAG_SETS}
        assert "=1+1" in {r["rationale"] for r in rows}
    assert all(r["model_a"] in CANDIDATES and not r["model_b"] and not r["shown_left"] and not r["outcome"]
               and not r["winner"] for r in likert)

    twin = make_study(evaluator, annotators, manager, order=tuple(reversed(CANDIDATES)), name="Twin")
    client = client_as(evaluator, "token")
    response = import_file(client, twin, f"judgments.{fmt}", body)
    assert response.status_code == 201, response.content
    assert response.json() == {"study": twin.pk, "imported": 18}
    again = read_rows(export(client, twin, format=fmt)[0], fmt)
    assert comparable(again) == comparable(rows)
    assert stored(twin) == stored(first)
    assert Unit.objects.filter(study=twin, kind="likert", taken=2).count() == 6  # every place filled


def test_a_rating_on_a_criterion_the_study_dropped_still_gets_its_column(evaluator, annotators, manager):
    study = make_study(evaluator, annotators, manager)
    judge_everything(study, annotators[:1])
    services.study_update_tasks(study=study, tasks={"task_kinds": "both", "likert_criteria": CRITERIA[1:],
                                                    "failure_tags": TAGS})
    body, _ = export(client_as(manager, "token"), study, format="csv")
    rows = read_rows(body, "csv")
    assert [c for c in rows[0] if c.startswith("rating:")] == ["rating:style", "rating:factuality"]
    assert {r["rating:factuality"] for r in rows if r["kind"] == "likert"} == {"na", "2", "3"}


HEADER = "kind,prompt_id,model_a,model_b,outcome,rating:factuality,rating:style,tags,annotator\n"
GOOD_LIKERT = "likert,q1,alpha-model,,,2,4,refused,ann1\n"
GOOD_PAIR = "pairwise,q1,alpha-model,beta-model,a,,,hallucination;unsafe,ann2\n"

BAD_FILES = [
    # (label, filename, content, (line, field) named, words in the message)
    ("a point beyond the scale", "j.csv", HEADER + GOOD_LIKERT.replace(",2,4,", ",2,6,"), (2, "ratings"),
     "criterion 'style' (Style) is rated 6; give a point from 1 to 5"),
    ("not applicable where the criterion has none", "j.csv", HEADER + GOOD_LIKERT.replace(",2,4,", ",2,na,"),
     (2, "ratings"), "criterion 'style' (Style) has no \"not applicable\""),
    ("a criterion left unrated", "j.csv", HEADER + GOOD_LIKERT.replace(",2,4,", ",2,,"), (2, "ratings"),
     "criterion 'style' (Style) is not rated"),
    ("a rating that is no point", "j.csv", HEADER + GOOD_LIKERT.replace(",2,4,", ",good,4,"),
     (2, "rating:factuality"), "must be a point"),
    ("an unknown criterion", "j.jsonl",
     '{"kind": "likert", "prompt_id": "q1", "model_a": "alpha-model", "annotator": "ann1", '
     '"ratings": {"factuality": 2, "style": 4, "tone": 3}}\n', (1, "ratings"), "unknown criterion 'tone'"),
    ("ratings that are not an object", "j.jsonl",
     '{"kind": "likert", "prompt_id": "q1", "model_a": "alpha-model", "annotator": "ann1", "ratings": [2, 4]}\n',
     (1, "ratings"), "must be an object"),
    ("a point that is true", "j.jsonl",
     '{"kind": "likert", "prompt_id": "q1", "model_a": "alpha-model", "annotator": "ann1", '
     '"ratings": {"factuality": true, "style": 4}}\n', (1, "ratings"), "must be a point"),
    ("an unknown tag", "j.csv", HEADER + GOOD_PAIR.replace("unsafe", "rude"), (2, "tags"), "unknown tag 'rude'"),
    ("an unknown tag in a JSON list", "j.jsonl",
     '{"prompt_id": "q1", "model_a": "alpha-model", "model_b": "beta-model", "outcome": "tie", '
     '"annotator": "ann1", "tags": ["refused", "boring"]}\n', (1, "tags"), "unknown tag 'boring'"),
    ("a Likert row with a second candidate", "j.csv", HEADER + GOOD_LIKERT.replace(",,,2", ",beta-model,,2"),
     (2, "model_b"), "must be empty on a Likert row"),
    ("a Likert row with a verdict", "j.csv", HEADER + GOOD_LIKERT.replace(",,,2", ",,a,2"), (2, "outcome"),
     "must be empty on a Likert row"),
    ("a pairwise row with ratings", "j.csv", HEADER + GOOD_PAIR.replace(",a,,,", ",a,3,,"),
     (2, "rating:factuality"), "only a Likert row has ratings"),
    ("an unknown kind", "j.csv", HEADER + GOOD_LIKERT.replace("likert,", "grid,"), (2, "kind"),
     "must be pairwise or likert"),
    ("a Likert row rated twice", "j.csv", HEADER + GOOD_LIKERT + GOOD_LIKERT.replace(",2,4,", ",3,4,"), (3, None),
     "duplicates line 2: 'ann1' rated the output of 'alpha-model' for 'q1'"),
    ("a candidate with no output to rate", "j.csv", HEADER + GOOD_LIKERT.replace("alpha-model", "delta-model"),
     (2, "model_a"), "no candidate named 'delta-model'"),
]


@pytest.mark.parametrize("label, filename, content, named, words", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_a_bad_likert_or_tag_import_is_a_400_naming_line_and_field_and_writes_nothing(
        evaluator, annotators, manager, label, filename, content, named, words):
    study = make_study(evaluator, annotators, manager)
    before = state(study)
    response = import_file(client_as(evaluator, "token"), study, filename, content.encode())
    assert response.status_code == 400, response.content
    body = response.json()
    assert "nothing was imported" in body["detail"]
    assert named in [(e["line"], e["field"]) for e in body["errors"]], body
    assert any(words in e["message"] for e in body["errors"]), body
    assert state(study) == before


def test_good_rows_beside_a_bad_one_are_not_written_and_every_error_is_listed(evaluator, annotators, manager):
    study = make_study(evaluator, annotators, manager)
    content = (HEADER + GOOD_LIKERT + GOOD_PAIR + GOOD_LIKERT.replace("q1", "q2").replace(",2,4,", ",9,4,")
               + GOOD_PAIR.replace("q1", "q3").replace("unsafe", "rude"))
    before = state(study)
    response = import_file(client_as(evaluator, "token"), study, "j.csv", content.encode())
    assert response.status_code == 400
    assert [(e["line"], e["field"]) for e in response.json()["errors"]] == [(4, "ratings"), (5, "tags")]
    assert state(study) == before
    fixed = HEADER + GOOD_LIKERT + GOOD_PAIR
    assert import_file(client_as(evaluator, "token"), study, "j.csv", fixed.encode()).status_code == 201
    likert = Judgment.objects.get(study=study, unit__kind="likert")
    assert (likert.ratings, likert.tags, likert.outcome) == ({"factuality": 2, "style": 4}, ["refused"], "")
    pair = Judgment.objects.get(study=study, unit__kind="pairwise")
    assert pair.tags == ["hallucination", "unsafe"] and pair.ratings is None


def test_likert_rows_into_a_study_without_likert_tasks_are_refused_by_line(evaluator, annotators, manager):
    study = make_study(evaluator, annotators, manager, kinds="pairwise", criteria=CRITERIA)
    response = import_file(client_as(evaluator, "token"), study, "j.csv", (HEADER + GOOD_LIKERT).encode())
    assert response.status_code == 400
    error = response.json()["errors"][0]
    assert error["line"] == 2 and "has no finished output for prompt 'q1'" in error["message"]
    assert not Judgment.objects.exists()


def test_a_likert_row_already_rated_by_the_annotator_is_refused(evaluator, annotators, manager):
    study = make_study(evaluator, annotators, manager)
    client = client_as(evaluator, "token")
    assert import_file(client, study, "j.csv", (HEADER + GOOD_LIKERT).encode()).status_code == 201
    response = import_file(client, study, "j.csv", (HEADER + GOOD_LIKERT).encode())
    assert response.status_code == 400
    assert response.json()["errors"][0]["message"] == (
        "'ann1' has already judged the output of 'alpha-model' for 'q1' in this study")
    assert Judgment.objects.count() == 1


def test_the_export_is_documented_in_the_schema_with_its_new_columns():
    from django.test import Client

    schema = Client().get(reverse("api-schema"), HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    text = schema["paths"]["/api/studies/{study_id}/judgments"]["get"]["description"]
    assert "kind (pairwise, likert)" in text and "`rating:<key>`" in text and "`na`" in text
