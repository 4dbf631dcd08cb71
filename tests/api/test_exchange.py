"""Judgments out (CSV, JSON Lines; streamed, optionally pseudonymised) and back in (validated whole).

The round trip: a study's judgments exported, imported into a second study with the same prompts
and candidates (created in the other order, so each pair's outputs are the other way round), and
exported again, give the same rows, the same counters and the same leaderboard.
"""
from __future__ import annotations

import csv
import io
import json
from collections import Counter
from datetime import timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.db.models import Count, Q, Sum
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from annotation import exchange, services
from annotation.api import selectors as api_selectors
from annotation.models import Assignment, AuditEntry, Judgment, StudyMember, Unit
from arena import services as arena_services
from tests.conftest import PROMPTS_CSV, imported_jsonl

from .conftest import client_as

pytestmark = pytest.mark.django_db

CANDIDATES = ("alpha-model", "beta-model", "gamma-model")
RATIONALES = ["A is clearer.", "=SUM(A1:A9)", "'quoted", "-1 for tone", "Zweite Zeile\nüber zwei Zeilen", "", "@here"]
CHOICES = ("left", "right", "tie", "both_bad", "left")


def make_study(evaluator, annotators, manager, *, order=CANDIDATES, name="Support study"):
    study = services.study_create(name=name, created_by=evaluator, prompts_data=PROMPTS_CSV,
                                  prompts_filename="p.csv", overlap=2, annotators=annotators, managers=[manager])
    ids = list(study.prompts.values_list("external_id", flat=True))
    for cand in order:
        candidate = services.candidate_create(study=study, name=cand, backend="imported", spec={})
        n = CANDIDATES.index(cand)
        services.outputs_import(candidate=candidate, filename="out.jsonl", data=imported_jsonl(
            {pid: f"Variant {n} answer to {pid}" + " more" * n for pid in ids}))
    return study


def judge_everything(study, annotators) -> int:
    """The annotators take turns until no pair is left, with varied verdicts, rationales and times."""
    n = 0
    busy = list(annotators)
    while busy:
        for k, annotator in enumerate(list(busy)):
            assignment = services.assignment_next(study=study, annotator=annotator)
            if assignment is None:
                busy.remove(annotator)
                continue
            services.judgment_submit(assignment=assignment, choice=CHOICES[(n + k) % len(CHOICES)],
                                     rationale=RATIONALES[n % len(RATIONALES)],
                                     active_ms=None if n % 5 == 0 else 900 + n)
            n += 1
    return n


def export(client, study, **params):
    response = client.get(reverse("api-judgments", args=[study.pk]), params)
    assert response.status_code == 200, response.content
    assert response.streaming
    return b"".join(response.streaming_content), response


def read_rows(body: bytes, fmt: str) -> list[dict]:
    text = body.decode()
    if fmt == "jsonl":
        return [json.loads(line) for line in text.splitlines()]
    return list(csv.DictReader(io.StringIO(text, newline="")))


def import_file(client, study, name: str, content: bytes):
    return client.post(reverse("api-judgments-import", args=[study.pk]),
                       {"file": SimpleUploadedFile(name, content)})


def canonical(rows: list[dict]) -> list[tuple]:
    """Rows with each pair written alphabetically (outcome and winner turned with it), sorted."""
    flip = {"a": "b", "b": "a", "model_a": "model_b", "model_b": "model_a"}
    out = []
    for row in rows:
        row = {k: (str(v).lower() if isinstance(v, bool) else "" if v is None else str(v)) for k, v in row.items()}
        if row["model_a"] > row["model_b"]:
            row["model_a"], row["model_b"] = row["model_b"], row["model_a"]
            row["outcome"] = flip.get(row["outcome"], row["outcome"])
            row["winner"] = flip.get(row["winner"], row["winner"])
        out.append(tuple(row.get(c, "") for c in exchange.COLUMNS))  # CSV spreads ratings over rating:<key>
    return sorted(out)


def assert_counters_match_rows(study) -> None:
    live = dict(Unit.objects.filter(study=study).annotate(
        n=Count("assignments", filter=Q(assignments__released=False))).values_list("pk", "n"))
    assert dict(Unit.objects.filter(study=study).values_list("pk", "taken")) == live
    for member in StudyMember.objects.filter(study=study, role="annotator"):
        assert member.done == Judgment.objects.filter(study=study, annotator=member.user).count()


def state(study) -> tuple:
    return (Judgment.objects.count(), Assignment.objects.count(),
            Unit.objects.filter(study=study).aggregate(t=Sum("taken"))["t"],
            tuple(StudyMember.objects.filter(study=study).order_by("pk").values_list("done", flat=True)),
            AuditEntry.objects.filter(study=study).count())


# Not the intervals, nor the ranks drawn from them: the bootstrap's seed includes the study's id.
BOARD_FIELDS = ("model", "rating", "battles", "wins", "losses", "ties", "both_bad", "win_rate")


def board(study_id: int) -> tuple:
    snapshot = arena_services.ratings_recompute(study_id=study_id, force=True, rounds=20)
    payload = snapshot.payload
    rows = [tuple(round(r[f], 9) if isinstance(r[f], float) else r[f] for f in BOARD_FIELDS)
            for r in payload["rows"]]
    # the length bins are A's win rate by (len A - len B): they mirror when pairs turn; "longer" does not
    return rows, payload["n_battles"], payload["position_bias"], payload["length_bias"]["longer_wins"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_export_then_import_into_a_twin_study_loses_nothing(evaluator, annotators, manager, fmt):
    first = make_study(evaluator, annotators, manager)
    n = judge_everything(first, annotators)
    assert n == 24
    services.member_exclude(study=first, user=annotators[2])
    body, response = export(client_as(manager, "token"), first, format=fmt)
    assert response["Content-Type"].startswith("text/csv" if fmt == "csv" else "application/jsonl")
    assert response["Content-Disposition"] == f'attachment; filename="study-{first.pk}-judgments.{fmt}"'
    rows = read_rows(body, fmt)
    # a study without Likert criteria has no rating:<key> column in CSV
    assert len(rows) == 24 and list(rows[0]) == list(exchange.csv_header() if fmt == "csv" else exchange.COLUMNS)

    twin = make_study(evaluator, annotators, manager, order=tuple(reversed(CANDIDATES)), name="Twin")
    services.member_exclude(study=twin, user=annotators[2])
    evaluator_client = client_as(evaluator, "token")
    response = import_file(evaluator_client, twin, f"judgments.{fmt}", body)
    assert response.status_code == 201, response.content
    assert response.json() == {"study": twin.pk, "imported": 24}

    again = read_rows(export(evaluator_client, twin, format=fmt)[0], fmt)
    assert canonical(again) == canonical(rows)
    # every pair really is the other way round in the twin, so outcomes were turned, not copied
    assert {r["model_a"] for r in again} != {r["model_a"] for r in rows}
    assert_counters_match_rows(twin)
    for user in annotators:
        assert (StudyMember.objects.get(study=twin, user=user).done
                == StudyMember.objects.get(study=first, user=user).done)
    assert arena_services.ratings_refresh(study_id=twin.pk) is not None  # the import asked for a refresh
    assert board(twin.pk) == board(first.pk)


def test_csv_cells_a_spreadsheet_would_run_are_quoted_and_come_back_as_they_were(evaluator, annotators, manager):
    study = make_study(evaluator, annotators, manager)
    judge_everything(study, annotators[:1])
    body, _ = export(client_as(manager, "token"), study, format="csv")
    rationales = [row["rationale"] for row in read_rows(body, "csv")]
    assert "'=SUM(A1:A9)" in rationales and "''quoted" in rationales and "'-1 for tone" in rationales
    assert "'@here" in rationales and not any(r.startswith(("=", "+", "@")) for r in rationales)
    parsed = exchange.parse_judgments(body, "j.csv").rows
    assert {r.rationale for r in parsed} >= {"=SUM(A1:A9)", "'quoted", "-1 for tone", "@here"}
    jsonl, _ = export(client_as(manager, "token"), study, format="jsonl")
    assert "=SUM(A1:A9)" in [r["rationale"] for r in read_rows(jsonl, "jsonl")]


def test_pseudonyms_are_stable_within_a_study_and_differ_across_studies(evaluator, annotators, manager):
    study = make_study(evaluator, annotators, manager)
    judge_everything(study, annotators)
    client = client_as(manager, "token")
    plain = read_rows(export(client, study)[0], "csv")
    first_body, _ = export(client, study, pseudonymize="1")
    second = read_rows(export(client, study, pseudonymize="true")[0], "csv")
    first = read_rows(first_body, "csv")
    assert [r["annotator"] for r in first] == [r["annotator"] for r in second]
    assert all(r["annotator"].startswith("annotator-") for r in first)
    mapping = {p["annotator"]: q["annotator"] for p, q in zip(plain, first)}
    assert len(set(mapping.values())) == len(mapping) == 3
    for user in annotators:
        assert user.username.encode() not in first_body
    other = make_study(evaluator, annotators, manager, name="Other")
    assert api_selectors.pseudonym(other.pk, annotators[0].pk) != api_selectors.pseudonym(study.pk, annotators[0].pk)
    # a pseudonymised file names no account, so it cannot be imported
    response = import_file(client_as(evaluator, "token"), other, "j.csv", first_body)
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "annotator"
    assert "pseudonymised" in response.json()["errors"][0]["message"]


def test_the_export_streams_in_chunks_whatever_the_study_size(evaluator, annotators, manager):
    study = make_study(evaluator, annotators, manager)
    judge_everything(study, annotators)
    with CaptureQueriesContext(connection) as queries:
        rows = api_selectors.judgment_rows(study, chunk=5)
        assert len(queries) == 0  # nothing is read before the first row is asked for
        first = next(rows)
        assert len(queries) == 2  # the members' exclusion flags, then the first chunk of five
        assert len([first, *rows]) == 24
    assert len(queries) == 1 + 5 + 1  # members, five chunks of at most five, the empty end


def test_an_export_asked_in_an_unknown_format_is_a_400_naming_the_parameter(evaluator, annotators, manager):
    study = make_study(evaluator, annotators, manager)
    client = client_as(manager, "token")
    response = client.get(reverse("api-judgments", args=[study.pk]), {"format": "xlsx"})
    assert response.status_code == 400 and "format" in response.json()
    response = client.get(reverse("api-judgments", args=[study.pk]), {"pseudonymize": "maybe"})
    assert response.status_code == 400 and "pseudonymize" in response.json()


HEADER = "prompt_id,sample_index,model_a,model_b,shown_left,outcome,winner,rationale,served_at,submitted_at," \
         "active_ms,annotator,excluded\n"
GOOD = "p1,0,alpha-model,beta-model,beta-model,a,model_a,fine,2025-01-02T10:00:00+00:00," \
       "2025-01-02T10:01:00+00:00,5000,ann1,false\n"

BAD_FILES = [
    # (label, filename, content, (line, field) named, words in the message)
    ("an unknown outcome", "j.csv", HEADER + GOOD.replace(",a,model_a,", ",left,,"), (2, "outcome"), "must be one of"),
    ("outcome and winner that disagree", "j.csv", HEADER + GOOD.replace(",a,model_a,", ",b,model_a,"),
     (2, "winner"), "says 'model_a' but outcome says 'b'"),
    ("an unknown prompt", "j.csv", HEADER + GOOD + GOOD.replace("p1,", "p9,").replace("ann1", "ann2"),
     (3, "prompt_id"), "no prompt 'p9'"),
    ("an unknown candidate", "j.csv", HEADER + GOOD.replace("beta-model,beta-model", "delta,delta"),
     (2, "model_b"), "no candidate named 'delta'"),
    ("an unknown annotator", "j.csv", HEADER + GOOD.replace("ann1", "nobody"), (2, "annotator"),
     "no account named 'nobody'"),
    ("a manager as annotator", "j.csv", HEADER + GOOD.replace("ann1", "manny"), (2, "annotator"),
     "'manny' is manager in this study"),
    ("a duplicate row", "j.csv", HEADER + GOOD + GOOD.replace(",a,model_a,", ",tie,tie,"), (3, None),
     "duplicates line 2"),
    ("a duplicate row with the pair turned", "j.jsonl",
     '{"prompt_id": "p1", "model_a": "alpha-model", "model_b": "beta-model", "winner": "tie", "annotator": "ann1"}\n'
     '{"prompt_id": "p1", "model_a": "beta-model", "model_b": "alpha-model", "winner": "tie", "annotator": "ann1"}\n',
     (2, None), "duplicates line 1"),
    ("a NUL byte in a rationale", "j.csv", HEADER + GOOD.replace("fine", "fi\x00ne"), (2, "rationale"), "NUL"),
    ("a NUL escape in a JSON annotator", "j.jsonl",
     '{"prompt_id": "p1", "model_a": "alpha-model", "model_b": "beta-model", "outcome": "a", '
     '"annotator": "ann\\u00001"}\n', (1, "annotator"), "NUL"),
    ("a time that is not a time", "j.csv", HEADER + GOOD.replace("2025-01-02T10:00:00+00:00", "yesterday"),
     (2, "served_at"), "ISO 8601"),
    ("served after submitted", "j.csv", HEADER + GOOD.replace("10:00:00", "11:00:00"), (2, "served_at"),
     "is after submitted_at"),
    ("shown left is neither", "j.csv", HEADER + GOOD.replace("beta-model,beta-model", "beta-model,gamma-model"),
     (2, "shown_left"), "must be model_a"),
    ("the same candidate twice", "j.csv", HEADER + GOOD.replace("alpha-model,beta-model", "beta-model,beta-model"),
     (2, "model_b"), "same candidate"),
    ("excluded where the study says not", "j.csv", HEADER + GOOD.replace(",false", ",true"), (2, "excluded"),
     "is not excluded in this study"),
    ("a huge active time", "j.csv", HEADER + GOOD.replace(",5000,", ",3000000000,"), (2, "active_ms"), "at most"),
    ("a missing column", "j.csv", "prompt_id,model_a,model_b,outcome\np1,alpha-model,beta-model,a\n",
     (1, "annotator"), "required column is missing"),
    ("no verdict", "j.csv", "prompt_id,model_a,model_b,annotator\np1,alpha-model,beta-model,ann1\n",
     (2, "outcome"), "give outcome"),
    ("a line that is not JSON", "j.jsonl", '{"prompt_id": "p1"\n', (1, None), "not valid JSON"),
]


@pytest.mark.parametrize("label, filename, content, named, words", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_a_bad_import_is_a_400_naming_line_and_field_and_writes_nothing(
        evaluator, annotators, manager, label, filename, content, named, words):
    study = make_study(evaluator, annotators, manager)
    services.assignment_next(study=study, annotator=annotators[2])  # an open lease, left alone
    before = state(study)
    response = import_file(client_as(evaluator, "token"), study, filename, content.encode())
    assert response.status_code == 400, response.content
    body = response.json()
    assert "nothing was imported" in body["detail"]
    assert named in [(e["line"], e["field"]) for e in body["errors"]], body
    assert any(words in e["message"] for e in body["errors"]), body
    assert state(study) == before


def test_every_bad_row_is_listed_with_the_good_ones_left_unwritten(evaluator, annotators, manager):
    study = make_study(evaluator, annotators, manager)
    content = HEADER + GOOD + GOOD.replace("p1,", "p8,").replace("ann1", "ann2") + \
        GOOD.replace("ann1", "ann3").replace(",a,model_a,", ",x,,")
    before = state(study)
    response = import_file(client_as(evaluator, "token"), study, "j.csv", content.encode())
    assert response.status_code == 400
    assert [(e["line"], e["field"]) for e in response.json()["errors"]] == [(3, "prompt_id"), (4, "outcome")]
    assert response.json()["total"] == 2
    assert state(study) == before


def test_a_pair_already_judged_or_held_open_is_refused_by_line(evaluator, annotators, manager):
    study = make_study(evaluator, annotators, manager)
    client = client_as(evaluator, "token")
    assert import_file(client, study, "j.csv", (HEADER + GOOD).encode()).status_code == 201
    response = import_file(client, study, "j.csv", (HEADER + GOOD).encode())
    assert response.status_code == 400
    assert response.json()["errors"][0]["message"] == "'ann1' has already judged this pair of 'p1' in this study"
    held = services.assignment_next(study=study, annotator=annotators[1])
    unit = Unit.objects.select_related("prompt").get(pk=held.unit_id)
    names = dict(study.candidates.values_list("pk", "name"))
    row = (f"{unit.prompt.external_id},0,{names[unit.cand_lo_id]},{names[unit.cand_hi_id]},,tie,,,,,,ann2,\n")
    response = import_file(client, study, "j.csv", (HEADER + row).encode())
    assert response.status_code == 400
    assert "holds this pair" in response.json()["errors"][0]["message"]
    assert Judgment.objects.count() == 1


def test_an_expired_lease_of_the_annotator_on_the_pair_is_taken_over(evaluator, annotators, manager):
    study = make_study(evaluator, annotators, manager)
    lease = services.assignment_next(study=study, annotator=annotators[0])
    services.leases_release_expired(study_id=study.pk, now=timezone.now() + timedelta(hours=2))
    unit = Unit.objects.select_related("prompt").get(pk=lease.unit_id)
    names = dict(study.candidates.values_list("pk", "name"))
    row = f"{unit.prompt.external_id},0,{names[unit.cand_lo_id]},{names[unit.cand_hi_id]},,a,,,,,,ann1,\n"
    assignments = Assignment.objects.count()
    response = import_file(client_as(evaluator, "token"), study, "j.csv", (HEADER + row).encode())
    assert response.status_code == 201, response.content
    assert Assignment.objects.count() == assignments  # the released lease row became the judged one
    taken = Assignment.objects.get(pk=lease.pk)
    assert taken.submitted_at is not None and not taken.released and taken.token != lease.token
    assert_counters_match_rows(study)
    assert AuditEntry.objects.filter(study=study, action="judgments_imported").get().detail["judgments"] == 1


def test_imported_rows_without_times_or_sides_take_the_import_time_and_model_a_on_the_left(
        evaluator, annotators, manager):
    study = make_study(evaluator, annotators, manager)
    started = timezone.now()
    content = "prompt_id,model_a,model_b,winner,annotator\np3,gamma-model,alpha-model,model_a,ann2\n"
    assert import_file(client_as(evaluator, "token"), study, "j.csv", content.encode()).status_code == 201
    judgment = Judgment.objects.select_related("unit__output_a__candidate").get()
    assert judgment.submitted_at >= started and judgment.served_at == judgment.submitted_at
    a_name = judgment.unit.output_a.candidate.name
    assert judgment.outcome == ("a" if a_name == "gamma-model" else "b")
    assert judgment.left_is_a == (a_name == "gamma-model")
    assert Counter(StudyMember.objects.filter(study=study).values_list("done", flat=True))[1] == 1
