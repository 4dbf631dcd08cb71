"""Judgments in and out of a study: the file's columns, the export's writers, the import's parser.

Pure Python (the standard library, arena.outcomes and annotation.uploads, no Django import), so
the API, a management command and the tests share one definition of the format.

One row per judgment, in CSV (a header, then rows) or JSON Lines (one object per line):

``kind``
    ``pairwise`` (a verdict on two outputs) or ``likert`` (ratings of one output on the study's
    criteria); on import optional, ``pairwise`` by default;
``prompt_id``
    the prompt's id in the study (its ``id`` column when the prompts were uploaded);
``sample_index``
    which sample of the prompt the two outputs are (0 unless the study draws several);
``model_a``, ``model_b``
    the two candidates, by name; ``model_a`` is the one ``outcome`` calls ``a``; on a Likert row
    ``model_a`` is the candidate of the rated output and ``model_b`` is empty;
``shown_left``
    the candidate the annotator saw on the left (on import: optional, ``model_a`` by default,
    as in Chatbot Arena's files); empty on a Likert row;
``outcome``
    the verdict in the stored vocabulary: ``a``, ``b``, ``tie`` or ``both_bad``; empty on a
    Likert row;
``winner``
    the same verdict in Chatbot Arena's vocabulary: ``model_a``, ``model_b``, ``tie`` or
    ``tie (bothbad)`` (so an export is also a battle file); on import one of ``outcome`` and
    ``winner`` is enough, and when both are given they must agree; empty on a Likert row;
``ratings``
    a Likert row's ratings.  JSON Lines: an object ``{criterion key: point}``, with ``null`` for
    "not applicable" (``null`` on a pairwise row).  CSV: one column per criterion, named
    ``rating:<key>`` (the study's criteria, in its order, then any key a judgment was rated on
    that the study no longer asks), holding the point, ``na`` for "not applicable", or nothing
    (not rated: every pairwise row, and a criterion added after the judgment);
``tags``
    the failure tags chosen, by key (any kind of row).  JSON Lines: a list; CSV: the keys joined
    by ``;`` (empty when none);
``rationale``
    the annotator's free text (at most :data:`MAX_RATIONALE` characters);
``served_at``, ``submitted_at``
    ISO 8601 times (a time without an offset is read as UTC); on import, when missing,
    ``submitted_at`` is the time of the import and ``served_at`` is ``submitted_at``;
``active_ms``
    the client's active time on the task, in milliseconds (may be empty);
``annotator``
    the annotator's user name (or, in an export asked for with ``pseudonymize``, a pseudonym
    stable within the study; such a file cannot be imported);
``excluded``
    whether the annotator is excluded from the study's results (``true``/``false``); on import
    optional, and when given it must agree with the study.

In CSV, a text cell that a spreadsheet would run as a formula (starting with ``=``, ``+``,
``-``, ``@``, a tab or a carriage return) is written with a leading ``'``, as OWASP advises, and
a cell starting with ``'`` gets one more; the parser takes exactly one ``'`` off again, so a
round trip gives back the text as it was.
"""
from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from arena import outcomes

from . import uploads
from .usertext import text_problem

__all__ = [
    "COLUMNS",
    "FORMATS",
    "KINDS",
    "NOT_APPLICABLE",
    "RATING_PREFIX",
    "MAX_RATIONALE",
    "JudgmentRow",
    "ParsedJudgments",
    "csv_cell",
    "csv_lines",
    "jsonl_lines",
    "parse_judgments",
]

COLUMNS = ("kind", "prompt_id", "sample_index", "model_a", "model_b", "shown_left", "outcome", "winner", "ratings",
           "tags", "rationale", "served_at", "submitted_at", "active_ms", "annotator", "excluded")
KINDS = ("pairwise", "likert")
RATING_PREFIX = "rating:"  # a CSV column rating:<criterion key>
NOT_APPLICABLE = "na"  # a CSV rating cell for "not applicable" (null in JSON Lines)
MAX_RATING = 100  # beyond any scale (taskconfig.MAX_SCALE); the study's scale is checked by the service
FORMATS = ("csv", "jsonl")
MAX_RATIONALE = 5000  # what the vote path keeps (annotation.services.judgment_submit)
MAX_ACTIVE_MS = 2**31 - 1  # PositiveIntegerField
MAX_USERNAME = 150  # Django's username column
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")
_RATING_KEY = re.compile(r"[a-z][a-z0-9_]{0,39}")  # taskconfig's criterion keys
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


# --- writing -----------------------------------------------------------------------------------


def csv_cell(value: Any) -> Any:
    """A text value as a CSV cell that no spreadsheet runs as a formula (see the module docstring)."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


class _Line:
    """A file-like object whose ``write`` returns what it was given (csv.writer writes one row)."""

    def write(self, value: str) -> str:
        return value


def csv_header(rating_keys: Sequence[str] = ()) -> list[str]:
    """The CSV columns: :data:`COLUMNS` with ``ratings`` spread into one ``rating:<key>`` column each."""
    at = COLUMNS.index("ratings")
    return [*COLUMNS[:at], *(RATING_PREFIX + key for key in rating_keys), *COLUMNS[at + 1:]]


def csv_lines(rows: Iterable[dict], rating_keys: Sequence[str] = ()) -> Iterator[str]:
    """The header, then each row, as CSV text, one row at a time (nothing is held).

    ``rating_keys`` are the criteria that get a ``rating:<key>`` column; a row's rating under
    any other key would be lost, so the caller passes every key its rows were rated on."""
    writer = csv.writer(_Line(), lineterminator="\r\n")
    yield writer.writerow(csv_header(rating_keys))
    at = COLUMNS.index("ratings")
    before, after = COLUMNS[:at], COLUMNS[at + 1:]
    for row in rows:
        ratings = row["ratings"] or {}
        yield writer.writerow([
            *(_csv_value(row[name]) for name in before),
            *(_csv_rating(ratings, key) for key in rating_keys),
            *(_csv_value(row[name]) for name in after),
        ])


def _csv_rating(ratings: dict, key: str) -> Any:
    if key not in ratings:
        return ""
    value = ratings[key]
    return NOT_APPLICABLE if value is None else value


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return csv_cell(uploads.TAG_SEPARATOR.join(value))
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat()
    return csv_cell(value)


def jsonl_lines(rows: Iterable[dict]) -> Iterator[str]:
    """Each row as one JSON object on its own line."""
    for row in rows:
        yield json.dumps({name: _json_value(row[name]) for name in COLUMNS}, ensure_ascii=False) + "\n"


def _json_value(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


# --- reading -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class JudgmentRow:
    """One judgment of an import file, checked on its own (the study is checked by the service).

    ``code`` is the outcome code (:mod:`arena.outcomes`) for ``model_a`` against ``model_b``
    (-1 on a Likert row, whose ``model_a`` is the rated output's candidate and ``model_b`` and
    ``shown_left`` are empty).  ``ratings`` ({criterion key: point or None}) is a Likert row's,
    None on a pairwise row; ``tags`` are failure-tag keys.  Criteria and tags are checked
    against the study by the service.
    """

    prompt_id: str
    sample_index: int
    model_a: str
    model_b: str
    shown_left: str
    code: int
    rationale: str
    served_at: datetime | None
    submitted_at: datetime | None
    active_ms: int | None
    annotator: str
    excluded: bool | None
    line: int
    index: int | None = None
    kind: str = "pairwise"
    ratings: dict | None = None
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class ParsedJudgments:
    """The good rows, in file order; ``errors`` (at most ``MAX_REPORTED_ERRORS``, ``total`` in all)
    only when the caller asked to check on (``keep_errors``) rather than be refused at once."""

    rows: tuple[JudgmentRow, ...]
    warnings: tuple[str, ...]
    errors: tuple[uploads.RowError, ...] = ()
    total: int = 0


def parse_judgments(data: uploads.UploadData, filename: str, *,
                    max_bytes: int | None = uploads.MAX_UPLOAD_BYTES, keep_errors: bool = False) -> ParsedJudgments:
    """Parse a judgments file (CSV, JSON Lines or a JSON list) in the export's columns.

    Reads the whole file and raises :class:`annotation.uploads.UploadError` naming every bad
    line and field, so the caller writes all rows or none; with ``keep_errors`` a file whose
    records can be read returns its good rows and its errors instead, so the caller can check
    the good rows further and report everything at once.  Two rows for the same prompt, sample,
    pair of candidates and annotator are a duplicate (an annotator judges a pair once), and so
    are two Likert rows for the same prompt, sample, candidate and annotator.
    """
    source = uploads._Source(data, filename, required=("prompt_id", "model_a", "annotator"),
                             known=COLUMNS, known_prefixes=(RATING_PREFIX,), max_bytes=max_bytes)
    errors = uploads._Errors()
    is_csv = source.format == "csv"
    rows: list[JudgmentRow] = []
    seen: dict[tuple, tuple[int, int | None]] = {}
    for line, index, obj in source.records():
        row = source.row(obj, line, index, errors)
        if row is None:
            continue
        if is_csv:
            row.obj = {k: _csv_text(v) for k, v in row.obj.items()}
        kind = _kind(row)
        prompt_id = row.string("prompt_id", required=True, max_length=uploads.MAX_ID_LENGTH, allow_int=True)
        sample = row.integer("sample_index", maximum=uploads.MAX_SAMPLE_INDEX)
        model_a = row.string("model_a", required=True, max_length=200)
        if kind == "likert":
            for key in ("model_b", "shown_left", "outcome", "winner"):
                value = row.obj.get(key)
                if _given(value) and not (key == "shown_left" and value == model_a):
                    row.error(key, "must be empty on a Likert row (the ratings of one output, model_a's)")
            model_b = shown_left = ""
            code = -1
            ratings = _ratings(row, is_csv)
        else:
            model_b = row.string("model_b", required=True, max_length=200)
            if model_a and model_a == model_b:
                row.error("model_b", f"is the same candidate as model_a ({model_a!r})")
            shown_left = row.string("shown_left", max_length=200) or model_a
            if shown_left and model_a and model_b and shown_left not in (model_a, model_b):
                row.error("shown_left", f"must be model_a ({model_a!r}) or model_b ({model_b!r}), not {shown_left!r}")
            code = _verdict(row)
            ratings = None
            given = [k for k, v in row.obj.items()
                     if (k == "ratings" or (is_csv and k.startswith(RATING_PREFIX))) and _given(v) and v != {}]
            if given:
                row.error(given[0], "only a Likert row has ratings (kind likert); a pairwise row has a verdict")
        tags = row.tags("tags")
        rationale = row.string("rationale", strip=False).strip()
        if len(rationale) > MAX_RATIONALE:
            row.error("rationale", f"is {len(rationale)} characters long; the limit is {MAX_RATIONALE}")
        served_at = _time(row, "served_at")
        submitted_at = _time(row, "submitted_at")
        if served_at and submitted_at and served_at > submitted_at:
            row.error("served_at", f"is after submitted_at ({served_at.isoformat()} > {submitted_at.isoformat()})")
        active_ms = row.integer("active_ms", maximum=MAX_ACTIVE_MS)
        annotator = row.string("annotator", required=True, max_length=MAX_USERNAME)
        excluded = _flag(row, "excluded")
        if row.ok:
            key = (kind, prompt_id, sample or 0, frozenset((model_a, model_b)), annotator)
            first = seen.setdefault(key, (line, index))
            if first != (line, index):
                what = f"rated the output of {model_a!r} for" if kind == "likert" else "judged this pair of"
                row.error(None, f"duplicates {uploads._where(*first)}: {annotator!r} {what} "
                                f"{prompt_id!r} (sample {sample or 0}) once already")
        if row.ok:
            rows.append(JudgmentRow(prompt_id, sample or 0, model_a, model_b, shown_left, code, rationale,
                                    served_at, submitted_at, active_ms, annotator, excluded, line, index,
                                    kind, ratings, tags))
    if not keep_errors:
        errors.raise_if_any()
    if not rows and not errors.total:
        raise uploads.UploadError("the file has no judgments")
    return ParsedJudgments(tuple(rows), tuple(source.warnings), tuple(errors.kept), errors.total)


def _csv_text(value: Any) -> Any:
    """Undo :func:`csv_cell`: one leading ``'`` before a formula character comes off."""
    if isinstance(value, str) and value.startswith("'") and value[1:].startswith(_FORMULA_START):
        return value[1:]
    return value


def _given(value: Any) -> bool:
    return value is not None and not (isinstance(value, str) and not value.strip())


def _kind(row) -> str:
    value = row.obj.get("kind")
    if not _given(value):
        return "pairwise"
    if isinstance(value, str) and value.strip().lower() in KINDS:
        return value.strip().lower()
    shown = repr(value)[:40] if isinstance(value, str) else uploads._type_name(value)
    row.error("kind", f"must be pairwise or likert, not {shown}")
    return "pairwise"


def _ratings(row, is_csv: bool) -> dict:
    """A Likert row's ratings, checked for shape only ({key: point or None}); which criteria and
    which points are the study's (``taskconfig.ratings_validate``, run by the service)."""
    ratings: dict = {}
    if is_csv:
        if _given(row.obj.get("ratings")):
            row.error("ratings", f"in CSV the ratings are one column per criterion, named {RATING_PREFIX}<key>")
        for column, value in row.obj.items():
            if not column.startswith(RATING_PREFIX):
                continue
            key = column[len(RATING_PREFIX):]
            if not _given(value):
                continue  # not rated
            cell = value.strip()
            if not _RATING_KEY.fullmatch(key):
                row.error(column, "names no criterion key (a lower-case letter, then letters, digits or _)")
            elif cell.lower() == NOT_APPLICABLE:
                ratings[key] = None
            elif cell.isdigit() and len(cell) <= 3 and 1 <= int(cell) <= MAX_RATING:
                ratings[key] = int(cell)
            else:
                row.error(column, f"must be a point (a whole number from 1), {NOT_APPLICABLE} for not applicable, "
                                  f"or empty; not {cell[:40]!r}")
        return ratings
    value = row.obj.get("ratings")
    if value is None:
        return ratings
    if not isinstance(value, dict):
        row.error("ratings", f"must be an object {{criterion key: point or null}}, not {uploads._type_name(value)}")
        return ratings
    for key, point in value.items():
        if not _RATING_KEY.fullmatch(key):
            row.error("ratings", f"has a key that is no criterion key: {key[:40]!r}")
            return ratings
        if point is not None and (isinstance(point, bool) or not isinstance(point, int)
                                  or not 1 <= point <= MAX_RATING):
            shown = repr(point)[:40] if isinstance(point, (int, float)) else uploads._type_name(point)
            row.error("ratings", f"criterion {key!r} must be a point (a whole number from 1) or null, not {shown}")
            return ratings
        ratings[key] = point
    return ratings


def _verdict(row) -> int:
    """The outcome code from ``outcome`` (stored vocabulary) and/or ``winner`` (Arena's)."""
    stored = row.obj.get("outcome")
    arena = row.obj.get("winner")
    stored = None if stored is None or (isinstance(stored, str) and not stored.strip()) else stored
    arena = None if arena is None or (isinstance(arena, str) and not arena.strip()) else arena
    codes = []
    for key, value, vocabulary in (("outcome", stored, outcomes.STORED_CODE), ("winner", arena, outcomes.ARENA_CODE)):
        if value is None:
            continue
        name = value.strip() if isinstance(value, str) else value
        if not isinstance(name, str) or name not in vocabulary:
            allowed = ", ".join(repr(v) for v in vocabulary)
            shown = repr(value) if isinstance(value, str) else uploads._type_name(value)
            row.error(key, f"must be one of {allowed}, not {shown[:60]}")
            return -1
        codes.append((key, vocabulary[name]))
    if not codes:
        row.error("outcome", "is missing: give outcome (a, b, tie, both_bad) or winner "
                             "(model_a, model_b, tie, tie (bothbad))")
        return -1
    if len(codes) == 2 and codes[0][1] != codes[1][1]:
        row.error("winner", f"says {outcomes.ARENA[codes[1][1]]!r} but outcome says "
                            f"{outcomes.STORED[codes[0][1]]!r}")
        return -1
    return codes[0][1]


def _time(row, key: str) -> datetime | None:
    value = row.obj.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        row.error(key, f"must be an ISO 8601 time such as 2025-01-31T14:05:00+00:00, not {uploads._type_name(value)}")
        return None
    problem = text_problem(value)
    if problem:
        row.error(key, problem)
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        row.error(key, f"must be an ISO 8601 time such as 2025-01-31T14:05:00+00:00, not {value.strip()[:40]!r}")
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    try:
        return parsed.astimezone(timezone.utc)
    except OverflowError:
        row.error(key, f"is out of range: {value.strip()[:40]!r}")
        return None


def _flag(row, key: str) -> bool | None:
    value = row.obj.get(key)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.strip().lower()
        if not lowered:
            return None
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
    shown = repr(value)[:40] if isinstance(value, (str, int, float)) else uploads._type_name(value)
    row.error(key, f"must be true or false, not {shown}")
    return None
