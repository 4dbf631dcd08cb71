"""Parse uploaded prompt, output and battle files, validating the whole file first.

Pure Python (the standard library, arena.outcomes and annotation.usertext, no Django import) so
that views, management commands and Celery tasks share one parser and the tests need no database.

Every parser reads the whole file and either returns every row or raises
:class:`UploadError` listing every bad row (up to :data:`MAX_REPORTED_ERRORS`, then a
count), so the caller can write all rows in one transaction or none. Errors name the
physical line of the file (1-based; for CSV the header is line 1 and a quoted
multi-line record is reported at the line where it starts), the element index for a
JSON list, and the field.

Formats
-------
The file name's extension picks the format; content decides where the extension
is missing or unknown, and between the two JSON forms:

* ``.csv`` (``.tsv``): a header row, then one record per row. Column names are matched
  after stripping and lower-casing. Blank rows are skipped.
* ``.jsonl`` / ``.ndjson`` / ``.json``: one JSON object per line (blank lines skipped),
  or, when the content starts with ``[``, a JSON list of objects.
  (``.json`` files often hold JSON Lines: that is what ``datasets`` writes.)

Encoding is UTF-8 with or without a byte order mark; CRLF line endings are fine.
``data`` is bytes or a binary file object (such as Django's ``UploadedFile``). Files over
``max_bytes`` (default :data:`MAX_UPLOAD_BYTES`) are refused before anything is read
(from ``len()``, the upload's ``size`` or the file's end); pass ``max_bytes=None`` for
trusted local files such as a Chatbot Arena dump. Prompts and outputs are read as a
stream: the file is decoded a chunk at a time and parsed as it arrives, so memory holds
the parsed rows, never a second copy of the file.

Every text value is checked for what no database can store (a NUL character, a lone
surrogate from a ``\ud800`` escape; see :mod:`annotation.usertext`), and every number
against the column it goes into, so a bad value is a named error here, not a failed
write later. A JSON line nested more than :data:`~annotation.usertext.MAX_JSON_DEPTH`
levels is refused before it is parsed.

Prompts (:func:`parse_prompts`)
    ``id`` (required, at most :data:`MAX_ID_LENGTH` characters, unique in the file; a
    JSON integer is accepted and turned into a string), ``prompt`` (required, surrounding
    whitespace stripped), and optional ``reference``, ``tags``, ``image`` (a relative
    path or URL of at most :data:`MAX_IMAGE_LENGTH` characters, carried through
    unchecked) and ``gold_answer``. Tags are separated by
    ``;`` in CSV (``billing;easy``); in JSON they are a list of strings or one string
    separated by ``;`` the same way. Tags are stripped, empty ones dropped and exact
    duplicates removed, keeping the first spelling and the order. Other columns are
    ignored and reported in ``warnings``.

Imported outputs (:func:`parse_imported_outputs`)
    ``prompt_id`` (required), ``output`` (required, not blank; kept exactly as given),
    optional ``sample_index`` (integer from 0 to :data:`MAX_SAMPLE_INDEX`, default 0),
    ``latency_ms`` and ``cost`` (numbers from 0 to :data:`MAX_LATENCY_MS` and
    :data:`MAX_COST`) and ``prompt_tokens`` / ``completion_tokens`` (integers from 0 to
    :data:`MAX_TOKENS`). A
    ``(prompt_id, sample_index)`` pair may appear once. Empty optional values (an empty
    CSV cell, JSON ``null``) mean "not given".

Battles (:func:`parse_battles`)
    Chatbot Arena's public battle records: ``model_a``, ``model_b`` and ``winner`` (one
    of :data:`BATTLE_WINNERS`); other fields are ignored without warnings. The result is
    columnar (:class:`Battles`): integer codes into the model names and the winners, so a
    million rows cost three arrays, not a million objects. A file that is clean all
    through is read column by column (the whole JSON list in one ``json.loads``); any
    surprise sends it back through the row-by-row reader, which names every bad line.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
import re
from array import array
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from dataclasses import dataclass, field as dataclass_field
from functools import cached_property
from itertools import chain, repeat
from operator import eq, itemgetter
from pathlib import PurePath
from typing import Any, BinaryIO, Union

from arena.outcomes import ARENA as ARENA_OUTCOMES

from .usertext import MAX_JSON_DEPTH, json_depth_exceeds, number_too_long, text_problem

__all__ = [
    "BATTLE_WINNERS",
    "MAX_COST",
    "MAX_ID_LENGTH",
    "MAX_IMAGE_LENGTH",
    "MAX_LATENCY_MS",
    "MAX_REPORTED_ERRORS",
    "MAX_SAMPLE_INDEX",
    "MAX_TAG_LENGTH",
    "MAX_TOKENS",
    "MAX_UPLOAD_BYTES",
    "TAG_SEPARATOR",
    "Battles",
    "ImportedOutputRow",
    "ParsedOutputs",
    "ParsedPrompts",
    "PromptRow",
    "RowError",
    "UploadData",
    "UploadError",
    "parse_battles",
    "parse_imported_outputs",
    "parse_prompts",
]

MAX_UPLOAD_BYTES = 50 * 1024 * 1024
MAX_REPORTED_ERRORS = 50
# Limits of the columns the values go into (annotation/models.py).
MAX_ID_LENGTH = 200
MAX_TAG_LENGTH = 100
MAX_IMAGE_LENGTH = 500
MAX_SAMPLE_INDEX = 32767  # PositiveSmallIntegerField
MAX_TOKENS = 2**31 - 1  # PositiveIntegerField
# Float columns hold far more; these keep sums and averages finite and readable.
MAX_LATENCY_MS = 1e10  # about 115 days
MAX_COST = 1e9
TAG_SEPARATOR = ";"
BATTLE_WINNERS = ARENA_OUTCOMES  # the outcome vocabulary lives in arena/outcomes.py

_PROMPT_FIELDS = ("id", "prompt", "reference", "tags", "image", "gold_answer")
_OUTPUT_FIELDS = (
    "prompt_id",
    "output",
    "sample_index",
    "latency_ms",
    "cost",
    "prompt_tokens",
    "completion_tokens",
)
_BATTLE_FIELDS = ("model_a", "model_b", "winner")

_CSV_DELIMITERS = {".csv": ",", ".tsv": "\t"}
_JSON_SUFFIXES = {".json", ".jsonl", ".ndjson", ".jsonlines"}
# Formats people try to upload that would otherwise fail with a puzzling UTF-8 error.
_REFUSED_SUFFIXES = frozenset(
    {".xlsx", ".xlsm", ".xls", ".ods", ".numbers", ".pdf", ".doc", ".docx"}
    | {".parquet", ".arrow", ".feather", ".zip", ".gz", ".bz2", ".xz"}
)
_READ_BYTES = 1 << 20  # bytes read from an upload at a time
_AFTER_LONE_CR = re.compile(r"(?<=\r)(?!\n)")
_LEADING_WHITESPACE = re.compile(r"\s*")
_JSON_WHITESPACE = re.compile(r"[ \t\n\r]*")
_JSON_LIST_SEPARATOR = re.compile(r"[ \t\n\r]*([,\]])[ \t\n\r]*")
_MISSING = object()

#: What the parsers read: the bytes, or a binary file object positioned anywhere
#: (it is read from its start).
UploadData = Union[bytes, bytearray, memoryview, BinaryIO]


@dataclass(frozen=True)
class RowError:
    """One problem in an uploaded file.

    ``line`` is the 1-based physical line (``None`` for a problem with the whole file),
    ``index`` the 0-based element index when the file is a JSON list, and ``field`` the
    column or key (``None`` when the problem is with the record as a whole).
    """

    line: int | None
    field: str | None
    message: str
    index: int | None = None

    def __str__(self) -> str:
        where = []
        if self.line is not None:
            where.append(_where(self.line, self.index))
        if self.field is not None:
            where.append(f"field {self.field!r}")
        return f"{', '.join(where)}: {self.message}" if where else self.message


class UploadError(ValueError):
    """The file was refused; ``errors`` says where and why.

    ``errors`` holds at most :data:`MAX_REPORTED_ERRORS` entries; ``total`` counts every
    error found, so ``total - len(errors)`` were left out (``str()`` says how many).
    A plain string becomes one file-level error.
    """

    def __init__(self, errors: Sequence[RowError] | str, total: int | None = None) -> None:
        if isinstance(errors, str):
            errors = [RowError(None, None, errors)]
        self.errors: list[RowError] = list(errors)
        self.total: int = max(total or 0, len(self.errors))
        lines = [str(error) for error in self.errors]
        if self.total > len(self.errors):
            lines.append(f"…and {self.total - len(self.errors)} more")
        super().__init__("\n".join(lines))

    def __reduce__(self):
        return (type(self), (self.errors, self.total))


@dataclass(frozen=True)
class PromptRow:
    external_id: str
    text: str
    reference: str
    tags: tuple[str, ...]
    image: str
    gold_answer: str
    line: int


@dataclass(frozen=True)
class ParsedPrompts:
    """The rows of a prompt file, in file order, and notes that did not stop the upload
    (ignored columns, tags that look comma-separated)."""

    rows: tuple[PromptRow, ...]
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class ImportedOutputRow:
    prompt_id: str
    text: str
    sample_index: int
    latency_ms: float | None
    cost: float | None
    prompt_tokens: int | None
    completion_tokens: int | None
    line: int


@dataclass(frozen=True)
class ParsedOutputs:
    rows: tuple[ImportedOutputRow, ...]
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class Battles:
    """Battles as parallel integer-coded columns.

    Battle ``i`` is ``models[a[i]]`` (shown as A) against ``models[b[i]]``, and its
    winner is ``winners[winner_code[i]]``. ``models`` holds each stripped model name
    once, in order of first appearance in the ``model_a`` column, then ``model_b``;
    ``winners`` is :data:`BATTLE_WINNERS` as it was when the file was read. The codes are
    ``array("l")``, so ``numpy.asarray`` views them without a copy.

    The columns as lists of strings (``model_a``, ``model_b``, ``winner``; repeated
    names share one string object) and ``line`` (the 1-based line each battle starts
    on) are built on first use. For a JSON list, ``line`` walks the file again (its
    decoded text is kept for that), element by element: reading the whole list in one
    call does not say where elements start.
    """

    models: tuple[str, ...]
    a: array
    b: array
    winner_code: array
    winners: tuple[str, ...]
    _lines: Callable[[], list[int]] = dataclass_field(repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.winner_code)

    @cached_property
    def model_a(self) -> list[str]:
        return list(map(self.models.__getitem__, self.a))

    @cached_property
    def model_b(self) -> list[str]:
        return list(map(self.models.__getitem__, self.b))

    @cached_property
    def winner(self) -> list[str]:
        return list(map(self.winners.__getitem__, self.winner_code))

    @cached_property
    def line(self) -> list[int]:
        return self._lines()


def parse_prompts(
    data: UploadData, filename: str, *, max_bytes: int | None = MAX_UPLOAD_BYTES
) -> ParsedPrompts:
    """Parse a prompt file (CSV, JSON Lines or a JSON list); see the module docstring.

    Raises :class:`UploadError` naming every bad line and field.
    """
    source = _Source(
        data, filename, required=("id", "prompt"), known=_PROMPT_FIELDS, max_bytes=max_bytes
    )
    errors = _Errors()
    rows: list[PromptRow] = []
    seen: dict[str, tuple[int, int | None]] = {}
    for line, index, obj in source.records():
        row = source.row(obj, line, index, errors)
        if row is None:
            continue
        external_id = row.string("id", required=True, max_length=MAX_ID_LENGTH, allow_int=True)
        text = row.string("prompt", required=True)
        reference = row.string("reference")
        tags = row.tags("tags")
        image = row.string("image", max_length=MAX_IMAGE_LENGTH)
        gold_answer = row.string("gold_answer", allow_int=True)
        if external_id:
            first = seen.setdefault(external_id, (line, index))
            if first != (line, index):
                row.error("id", f"duplicate id {external_id!r} (first on {_where(*first)})")
        if row.ok:
            rows.append(PromptRow(external_id, text, reference, tags, image, gold_answer, line))
    errors.raise_if_any()
    if not rows:
        raise UploadError("the file has no prompts")
    return ParsedPrompts(tuple(rows), tuple(source.warnings))


def parse_imported_outputs(
    data: UploadData,
    filename: str,
    known_prompt_ids: Container[str] | None = None,
    *,
    max_bytes: int | None = MAX_UPLOAD_BYTES,
) -> ParsedOutputs:
    """Parse outputs produced outside Evalsite for an ``imported`` candidate.

    When ``known_prompt_ids`` is given, a ``prompt_id`` outside it is an error. Raises
    :class:`UploadError` naming every bad line and field.
    """
    source = _Source(
        data, filename, required=("prompt_id", "output"), known=_OUTPUT_FIELDS, max_bytes=max_bytes
    )
    errors = _Errors()
    rows: list[ImportedOutputRow] = []
    seen: dict[tuple[str, int], tuple[int, int | None]] = {}
    for line, index, obj in source.records():
        row = source.row(obj, line, index, errors)
        if row is None:
            continue
        prompt_id = row.string("prompt_id", required=True, max_length=MAX_ID_LENGTH, allow_int=True)
        if prompt_id and known_prompt_ids is not None and prompt_id not in known_prompt_ids:
            row.error("prompt_id", f"unknown prompt id {prompt_id!r}")
        text = row.string("output", required=True, strip=False)
        sample_index = row.integer("sample_index", maximum=MAX_SAMPLE_INDEX)
        latency_ms = row.number("latency_ms", maximum=MAX_LATENCY_MS)
        cost = row.number("cost", maximum=MAX_COST)
        prompt_tokens = row.integer("prompt_tokens", maximum=MAX_TOKENS)
        completion_tokens = row.integer("completion_tokens", maximum=MAX_TOKENS)
        if prompt_id and sample_index is not _INVALID:
            key = (prompt_id, sample_index or 0)
            first = seen.setdefault(key, (line, index))
            if first != (line, index):
                row.error(
                    "prompt_id",
                    f"duplicate output for prompt {prompt_id!r}, sample "
                    f"{key[1]} (first on {_where(*first)})",
                )
        if row.ok:
            rows.append(
                ImportedOutputRow(
                    prompt_id,
                    text,
                    sample_index or 0,
                    latency_ms,
                    cost,
                    prompt_tokens,
                    completion_tokens,
                    line,
                )
            )
    errors.raise_if_any()
    if not rows:
        raise UploadError("the file has no outputs")
    return ParsedOutputs(tuple(rows), tuple(source.warnings))


@dataclass(frozen=True)
class CheckRow:
    """One known-answer check of a check file: a pair (``a``, ``b``, ``better``) or one output
    rated on criteria (``candidate``, ``ratings`` {criterion: (low, high)})."""

    prompt_id: str
    kind: str
    a: str
    b: str
    better: str
    candidate: str
    ratings: dict
    sample_index: int
    note: str
    line: int


def _rating_range(row: _Row, key: str, scale: int) -> tuple[int, int] | None:
    """``"4"`` or ``"4-5"`` (inclusive) within 1..scale; empty: the criterion is not checked."""
    raw = row.string(key, allow_int=True)
    if not raw:
        return None
    low, sep, high = raw.partition("-")
    try:
        lo, hi = int(low.strip()), int(high.strip()) if sep else int(low.strip())
    except ValueError:
        row.error(key, f"must be a point or a range such as 4-5, got {raw!r}")
        return None
    if not 1 <= lo <= hi <= scale:
        row.error(key, f"must lie within 1-{scale} with the low end first, got {raw!r}")
        return None
    return lo, hi


def parse_checks(data: UploadData, filename: str, *, criteria: Sequence[dict] = (),
                 max_bytes: int | None = MAX_UPLOAD_BYTES) -> tuple[CheckRow, ...]:
    """Parse a file of gold items and attention checks (CSV, JSON Lines or a JSON list).

    Columns: ``prompt`` (the prompt's id), ``kind`` (gold, the default, or attention),
    ``note`` and ``sample`` (default 0), then either ``a``, ``b`` and ``better`` (a, b or
    tie: two candidates' outputs and the known better one) or ``candidate`` and one
    ``rating:<criterion>`` column per criterion checked (a point or an inclusive range such
    as ``4-5``).  Raises :class:`UploadError` naming every bad line and field.
    """
    scales = {c["key"]: int(c["scale"]) for c in criteria}
    rating_keys = [f"rating:{k}" for k in scales]
    source = _Source(data, filename, required=("prompt",),
                     known=("prompt", "kind", "note", "sample", "a", "b", "better", "candidate", *rating_keys),
                     max_bytes=max_bytes)
    errors = _Errors()
    rows: list[CheckRow] = []
    for line, index, obj in source.records():
        row = source.row(obj, line, index, errors)
        if row is None:
            continue
        prompt_id = row.string("prompt", required=True, max_length=MAX_ID_LENGTH, allow_int=True)
        kind = row.string("kind") or "gold"
        if kind not in ("gold", "attention"):
            row.error("kind", f"must be gold or attention, got {kind!r}")
        note = row.string("note")[:2000]
        sample = row.integer("sample", maximum=1000) or 0
        a, b = row.string("a", max_length=200), row.string("b", max_length=200)
        better = row.string("better")
        candidate = row.string("candidate", max_length=200)
        ratings = {}
        for key, scale in scales.items():
            span = _rating_range(row, f"rating:{key}", scale)
            if span is not None:
                ratings[key] = span
        if candidate and (a or b or better):
            row.error("candidate", "give either a, b and better (a pair) or candidate and ratings, not both")
        elif candidate:
            if not ratings:
                row.error("candidate", "name at least one rating:<criterion> with the expected point or range"
                          + (f" (criteria: {', '.join(scales)})" if scales else "; the study has no criteria"))
        elif a or b or better:
            for key, value in (("a", a), ("b", b)):
                if not value:
                    row.error(key, "is missing: a pair check names two candidates, a and b")
            if a and a == b:
                row.error("b", f"must name another candidate than a ({a!r})")
            if better not in ("a", "b", "tie"):
                row.error("better", f"must be a, b or tie, got {better!r}")
            if ratings:
                row.error("better", "a pair check takes no rating columns")
        else:
            row.error(None, "give a, b and better (a pair check) or candidate and rating:<criterion> columns")
        if row.ok:
            rows.append(CheckRow(prompt_id, kind, a, b, better, candidate, ratings, sample, note, line))
    errors.raise_if_any()
    if not rows:
        raise UploadError("the file has no checks")
    return tuple(rows)


def parse_battles(
    data: UploadData, filename: str, *, max_bytes: int | None = MAX_UPLOAD_BYTES
) -> Battles:
    """Parse pairwise battles: Chatbot Arena's public JSON list, JSON Lines or CSV.

    Raises :class:`UploadError` naming every bad line (and element index) and field.
    A battle of a model against itself is an error.
    """
    source = _Source(data, filename, required=_BATTLE_FIELDS, known=None, max_bytes=max_bytes)
    # Column by column first: a million clean rows then cost a few passes in C instead of
    # a million trips through Python. Anything unusual (a bad row, blank lines, CRLF,
    # quoted CSV) gives None, and the row-by-row reader, which is the reference for
    # what a valid file is and how its errors read, starts again from the top.
    reader = {
        "json": _json_list_battle_columns,
        "jsonl": _json_lines_battle_columns,
        "csv": _csv_battle_columns,
    }[source.format]
    columns = reader(source)
    battles = None if columns is None else _encode_battles(*columns)
    return battles if battles is not None else _parse_battle_rows(source)


# A battle file's columns: model_a, model_b and winner as raw values, and a function
# giving each battle's line.
_BattleColumns = tuple[Iterable[Any], Iterable[Any], Iterable[Any], Callable[[], list[int]]]


def _json_list_battle_columns(source: _Source) -> _BattleColumns | None:
    """The columns of a JSON list that ``json.loads`` reads in one call, else ``None``."""
    text = source.text
    try:
        items = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if type(items) is not list:
        return None
    return (
        map(itemgetter("model_a"), items),
        map(itemgetter("model_b"), items),
        map(itemgetter("winner"), items),
        lambda: [line for line, _, _ in _json_list_records([text])],
    )


def _json_lines_battle_columns(source: _Source) -> _BattleColumns | None:
    """The columns of JSON Lines with one value on every line and nothing else, else
    ``None`` (a blank line, leading whitespace, text after the value, a lone CR)."""
    lines = _plain_lines(source.text)
    if lines is None:
        return None
    scan = json.JSONDecoder().scan_once  # raw_decode without the Python wrapper
    ends: list[int] = []
    try:
        # scan_once says where each value ends; collecting the ends beside the values
        # (append returns None) keeps no million (value, end) tuples alive for the GC.
        items = [value for value, end in map(scan, lines, repeat(0)) if ends.append(end) is None]
    except (ValueError, RecursionError):
        return None
    # A line with no value at its start raises StopIteration, which ends map() early.
    size = len(lines)
    if len(items) != size or not all(map(eq, ends, map(len, lines))):
        return None
    return (
        map(itemgetter("model_a"), items),
        map(itemgetter("model_b"), items),
        map(itemgetter("winner"), items),
        lambda: list(range(1, size + 1)),
    )


def _csv_battle_columns(source: _Source) -> _BattleColumns | None:
    """The columns of CSV that splits plainly (no quote, no NUL, no lone CR, the header
    on line 1, every row on one line with exactly the header's number of values), else
    ``None``. A bad header raises :class:`UploadError` as the row-by-row reader would."""
    text, delimiter = source.text, source.delimiter
    lines = None if '"' in text or "\0" in text else _plain_lines(text)
    if lines is None:
        return None
    header = lines[0].split(delimiter)
    if not any(cell.strip() for cell in header):
        return None
    names = [name.strip().lower() for name in header]
    source._check_header(names, 1)
    width = len(names)
    body = lines[1:]
    if (
        not body
        or set(map(str.count, body, repeat(delimiter))) != {width - 1}
        or max(map(len, lines)) > csv.field_size_limit()
    ):
        return None
    size = len(body)
    cells = delimiter.join(body).split(delimiter)
    column = {name: cells[k::width] for k, name in enumerate(names)}
    return (
        column["model_a"],
        column["model_b"],
        column["winner"],
        lambda: list(range(2, size + 2)),
    )


def _plain_lines(text: str) -> list[str] | None:
    """``text`` split on LF, CRLF counting as LF, without the empty string after a final
    newline; ``None`` if a CR stands alone (the CSV reader would end a line there).
    Split on LF only, as :func:`_json_lines_records`: JSON strings may hold U+2028."""
    if "\r" in text:
        text = text.replace("\r\n", "\n")
        if "\r" in text:
            return None
    lines = text.split("\n")
    if not lines[-1]:
        lines.pop()
    return lines


class _ModelCodes(dict):
    """Raw model value -> index into ``names`` (stripped names, in order of first
    appearance). Each distinct raw value is checked and stripped once, in
    ``__missing__``; a value that is not a non-blank string raises ``KeyError``."""

    def __init__(self) -> None:
        super().__init__()
        self.names: dict[str, int] = {}

    def __missing__(self, raw: Any) -> int:
        name = raw.strip() if type(raw) is str else ""
        if not name:
            raise KeyError(raw)
        code = self.names.setdefault(name, len(self.names))
        self[raw] = code
        return code


def _encode_battles(
    model_a: Iterable[Any],
    model_b: Iterable[Any],
    winner: Iterable[Any],
    line_numbers: Callable[[], list[int]],
) -> Battles | None:
    """Code clean columns as :class:`Battles`; ``None`` if any row is not a valid battle
    (the row-by-row reader then says which and why)."""
    winners = tuple(BATTLE_WINNERS)
    winner_codes = {w: k for k, w in enumerate(winners)}
    codes = _ModelCodes()
    try:
        # list() then array(): faster than array() pulling from the iterator.
        a = array("l", list(map(codes.__getitem__, model_a)))
        b = array("l", list(map(codes.__getitem__, model_b)))
        w = array("l", list(map(winner_codes.__getitem__, winner)))
    except (KeyError, TypeError):  # missing key, not an object, unhashable or bad value
        return None
    if not w or any(map(eq, a, b)):
        return None
    return Battles(tuple(codes.names), a, b, w, winners, line_numbers)


def _parse_battle_rows(source: _Source) -> Battles:
    """Read battles row by row, recording every bad row; the reference for what the
    column readers accept."""
    errors = _Errors()
    model_a: list[str] = []
    model_b: list[str] = []
    winner: list[str] = []
    lines: list[int] = []
    names: dict[str, str] = {}
    winners = {w: w for w in BATTLE_WINNERS}
    # The common case is checked inline with no per-row objects; anything unusual goes
    # to _battle_row_errors.
    for line, index, obj in source.records():
        if type(obj) is dict:
            a = _battle_model_name(obj.get("model_a"), names)
            b = _battle_model_name(obj.get("model_b"), names)
            w = obj.get("winner")
            w = winners.get(w) if type(w) is str else None
            if a is not None and b is not None and a != b and w is not None:
                model_a.append(a)
                model_b.append(b)
                winner.append(w)
                lines.append(line)
                continue
        row = source.row(obj, line, index, errors)
        if row is not None:
            _battle_row_errors(row)
    errors.raise_if_any()
    if not winner:
        raise UploadError("the file has no battles")
    battles = _encode_battles(model_a, model_b, winner, lambda: lines)
    assert battles is not None  # every row was checked above
    return battles


def _battle_model_name(value: Any, names: dict[str, str]) -> str | None:
    """Look ``value`` up in ``names`` (raw name -> stripped, shared name), adding it if it
    is a non-blank string; ``None`` for anything else."""
    if type(value) is not str:
        return None
    name = names.get(value)
    if name is None:
        name = value.strip()
        if not name:
            return None
        name = names.setdefault(name, name)
        names[value] = name
    return name


def _battle_row_errors(row: _Row) -> None:
    a = row.string("model_a", required=True)
    b = row.string("model_b", required=True)
    if a and a == b:
        row.error("model_b", f"is the same model as model_a ({a!r})")
    w = row.obj.get("winner", _MISSING)
    if w is _MISSING:
        row.error("winner", "is missing")
    elif w not in BATTLE_WINNERS:
        allowed = ", ".join(repr(x) for x in BATTLE_WINNERS)
        shown = repr(w) if isinstance(w, str) else _type_name(w)
        row.error("winner", f"must be one of {allowed}, not {shown}")


# ---------------------------------------------------------------------------------------
# Reading files


class _Source:
    """An upload, its format, and the records in it, read as a stream.

    ``data`` is bytes or a binary file object (Django's ``UploadedFile``, an open file).
    Its size is checked before anything is read; then it is decoded a chunk at a time and
    :meth:`records` parses records as the chunks arrive, so memory holds the rows, not the
    file. :attr:`text` reads the whole file instead (battles' column readers need it).
    """

    def __init__(
        self,
        data: UploadData,
        filename: str,
        *,
        required: Sequence[str],
        known: Sequence[str] | None,
        max_bytes: int | None,
        known_prefixes: Sequence[str] = (),
    ) -> None:
        suffix = PurePath(filename or "").suffix.lower()
        if suffix in _REFUSED_SUFFIXES:
            raise UploadError(
                f"{suffix} files are not supported: export the sheet as CSV (UTF-8) "
                "or the data as JSON Lines"
            )
        size = _size_of(data)
        if max_bytes is not None and size is not None and size > max_bytes:
            raise UploadError(
                f"the file is {_megabytes(size)}; the limit is {_megabytes(max_bytes)}"
            )
        self._data = data
        self._max_bytes = max_bytes
        self._chunks = _decoded_chunks(data, max_bytes)
        self._head = self._read_head()
        self.required = tuple(required)
        self.known = None if known is None else frozenset(known)
        # CSV columns named by a prefix and a key (the judgments' "rating:<criterion>")
        self.known_prefixes = tuple(known_prefixes)
        self.warnings: list[str] = []
        self._unknown_keys: set[str] = set()
        self._comma_tags_warned = False
        # Whether text values need checking for NUL and lone surrogates: only once the file
        # has shown a NUL or a JSON \u escape (a surrogate can come from nowhere else).
        self.check_text = False
        self.format, self.delimiter = _detect_format("".join(self._head), suffix, filename)

    def _read_head(self) -> list[str]:
        """Decode the file up to the end of its first line that is not blank (enough to
        tell the format); refuse a file that holds only whitespace."""
        head: list[str] = []
        seen_text = False
        for chunk in self._chunks:
            head.append(chunk)
            start = 0
            if not seen_text:
                start = _LEADING_WHITESPACE.match(chunk).end()
                if start == len(chunk):
                    continue
                seen_text = True
            if "\n" in chunk[start:]:
                return head
        if not seen_text:
            raise UploadError("the file is empty")
        return head

    @cached_property
    def text(self) -> str:
        """The whole decoded file."""
        if isinstance(self._data, (bytes, bytearray, memoryview)):
            # One decode of the caller's bytes: no chunks held beside the text.
            view = memoryview(self._data).cast("B")
            start = len(codecs.BOM_UTF8) if view[: len(codecs.BOM_UTF8)] == codecs.BOM_UTF8 else 0
            try:
                text = str(view[start:], "utf-8")
            except UnicodeDecodeError as exc:
                raise _not_utf8(view[start:].tobytes(), exc.start, start, 1, 1) from None
            self._chunks.close()
        else:
            text = "".join([*self._head, *self._chunks])
        self._head = []
        return text

    def _stream(self) -> Iterator[str]:
        """The decoded file in chunks, from the start (once, unless :attr:`text` was read).

        Sets :attr:`check_text` before handing on the first chunk that needs it; the
        readers take no chunk before they need its text, so no earlier row does.
        """
        if "text" in self.__dict__:
            chunks: Iterable[str] = [self.text]
        else:
            head, self._head = self._head, []
            chunks = chain(head, self._chunks)
        after_backslash = False  # a "\\u" may fall across two chunks
        for chunk in chunks:
            if not self.check_text:
                if "\x00" in chunk or "\\u" in chunk or (after_backslash and chunk.startswith("u")):
                    self.check_text = True
                after_backslash = chunk.endswith("\\")
            yield chunk

    def _whole_text_again(self) -> str:
        """The whole file, decoded afresh from its start (for one error message)."""
        if "text" in self.__dict__:
            return self.text
        return "".join(_decoded_chunks(self._data, self._max_bytes))

    def records(self) -> Iterator[tuple[int, int | None, Any]]:
        """Yield ``(line, index, value)``; a value that is a :class:`RowError` is a
        record that could not be read at all."""
        if self.format == "csv":
            return self._csv_records()
        if self.format == "json":
            return _json_list_records(self._stream())
        return _json_lines_records(_lines(self._stream()), self._whole_text_again)

    def row(self, obj: Any, line: int, index: int | None, errors: _Errors) -> _Row | None:
        """Wrap a record for field access, or record why it is not a record and return
        ``None``."""
        if isinstance(obj, RowError):
            errors.add_error(obj)
            return None
        if not isinstance(obj, dict):
            errors.add(line, None, f"is not a JSON object (found {_type_name(obj)})", index)
            return None
        if self.known is not None and self.format != "csv":
            for key in obj.keys() - self.known - self._unknown_keys:
                self._unknown_keys.add(key)
                self.warnings.append(f"ignored key {key!r} (first on {_where(line, index)})")
        return _Row(obj, line, index, errors, self)

    def warn_comma_tags(self, line: int, index: int | None) -> None:
        if not self._comma_tags_warned:
            self._comma_tags_warned = True
            self.warnings.append(
                f"{_where(line, index)}, field 'tags': tags are separated by "
                f"{TAG_SEPARATOR!r}, so a tag containing ',' was kept whole"
            )

    def _csv_records(self) -> Iterator[tuple[int, int | None, Any]]:
        reader = csv.reader(_csv_lines(self._stream()), delimiter=self.delimiter, strict=True)
        after = 0  # physical lines consumed so far; a record starts on the next one
        header: list[str] | None = None
        header_line = 1
        try:
            for cells in reader:
                if any(cell.strip() for cell in cells):
                    header, header_line = cells, after + 1
                    break
                after = reader.line_num
        except csv.Error as exc:
            raise UploadError([_csv_error(exc, after + 1)]) from None
        assert header is not None  # the file is not blank, so there is a first row
        names = [name.strip().lower() for name in header]
        self._check_header(names, header_line)

        after = reader.line_num
        width = len(names)
        while True:
            start = after + 1
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield start, None, _csv_error(exc, start)
                return
            after = reader.line_num
            if not any(cell.strip() for cell in cells):
                continue
            if len(cells) > width and any(cell.strip() for cell in cells[width:]):
                yield (
                    start,
                    None,
                    RowError(
                        start, None, f"has {len(cells)} values but the header has {width} columns"
                    ),
                )
                continue
            yield (
                start,
                None,
                {name: cells[i] if i < len(cells) else "" for i, name in enumerate(names) if name},
            )

    def _check_header(self, names: list[str], line: int) -> None:
        problems = []
        seen: set[str] = set()
        for name in names:
            if name and name in seen:
                problems.append(RowError(line, name, "appears twice in the header"))
            seen.add(name)
        present = ", ".join(repr(name) for name in names if name) or "none"
        for name in self.required:
            if name not in seen:
                problems.append(
                    RowError(line, name, f"required column is missing (columns found: {present})")
                )
        if problems:
            raise UploadError(problems)
        if self.known is not None:
            for name in names:
                if name and name not in self.known and not name.startswith(self.known_prefixes):
                    self.warnings.append(f"ignored column {name!r}")


def _size_of(data: UploadData) -> int | None:
    """The size in bytes, known without reading: ``len`` of bytes, an upload's ``size``,
    or a seekable file's end; ``None`` if none of these says."""
    if isinstance(data, (bytes, bytearray)):
        return len(data)
    if isinstance(data, memoryview):
        return data.nbytes
    size = getattr(data, "size", None)
    if isinstance(size, int):
        return size
    try:
        here = data.tell()
        end = data.seek(0, io.SEEK_END)
        data.seek(here)
    except (AttributeError, OSError, ValueError):
        return None
    return end


def _byte_reader(data: UploadData) -> Callable[[int], bytes]:
    """A ``read(n)`` over ``data`` from its start."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        view = memoryview(data).cast("B")
        position = 0

        def read(n: int) -> bytes:
            nonlocal position
            piece = bytes(view[position : position + n])
            position += len(piece)
            return piece

        return read
    seekable = getattr(data, "seekable", None)
    if seekable is not None and seekable():
        data.seek(0)
    return data.read


def _decoded_chunks(data: UploadData, max_bytes: int | None) -> Iterator[str]:
    """Decode ``data`` as UTF-8 (a byte order mark skipped) a chunk at a time.

    A chunk never ends inside a character. Bytes that are not UTF-8 raise
    :class:`UploadError` naming their line, column and byte offset; a file of unknown
    size that grows past ``max_bytes`` is refused when it does.
    """
    read = _byte_reader(data)
    offset = 0  # byte offset of buf[0] in the file
    line, column = 1, 1  # where buf[0] is, in lines and characters
    total = 0
    carry = b""
    first = True
    while True:
        block = read(_READ_BYTES)
        total += len(block)
        if max_bytes is not None and total > max_bytes:
            raise UploadError(f"the file is over the limit of {_megabytes(max_bytes)}")
        final = not block
        buf = carry + block if carry else block
        if first:
            if len(buf) < len(codecs.BOM_UTF8) and not final:
                carry = buf
                continue
            first = False
            if buf.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
                raise UploadError('the file is UTF-16; save it as UTF-8 ("CSV UTF-8" in Excel)')
            if buf.startswith(codecs.BOM_UTF8):
                buf = buf[len(codecs.BOM_UTF8) :]
                offset = len(codecs.BOM_UTF8)
        cut = len(buf) if final else _complete_prefix(buf)
        try:
            text = str(memoryview(buf)[:cut], "utf-8")
        except UnicodeDecodeError as exc:
            raise _not_utf8(buf, exc.start, offset, line, column) from None
        if text:
            yield text
        if final:
            return
        last = text.rfind("\n")
        line += text.count("\n")
        column = len(text) - last if last >= 0 else column + len(text)
        offset += cut
        carry = buf[cut:]


def _complete_prefix(buf: bytes) -> int:
    """The length of ``buf`` without a UTF-8 character cut off at its end."""
    n = len(buf)
    for back in range(1, min(4, n) + 1):
        byte = buf[n - back]
        if byte < 0x80:
            return n
        if byte >= 0xC0:  # the lead byte of the last character
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return n if back >= need else n - back
    return n  # no lead byte in reach: let the decoder say what is wrong


def _not_utf8(buf: bytes, start: int, offset: int, line: int, column: int) -> UploadError:
    before = buf[:start]  # decodes: the error is the first bad byte
    newline = before.rfind(b"\n")
    line += before.count(b"\n")
    if newline >= 0:
        column = 1 + len(str(before[newline + 1 :], "utf-8"))
    else:
        column += len(str(before, "utf-8"))
    return UploadError(
        [
            RowError(
                line,
                None,
                f"the file is not UTF-8: byte 0x{buf[start]:02x} at byte offset "
                f"{offset + start} (column {column}) cannot be decoded; save the file as UTF-8",
            )
        ]
    )


def _lines(chunks: Iterable[str], *, keepends: bool = False) -> Iterator[str]:
    """Lines split on LF only, with their LF if ``keepends``. As ``str.split("\\n")``,
    a final LF is followed by an empty line when ``keepends`` is false.

    Not ``str.splitlines()``: that also splits on U+2028 and friends, which JSON allows
    unescaped inside strings.
    """
    pending: list[str] = []
    for chunk in chunks:
        parts = chunk.split("\n")
        if len(parts) == 1:
            pending.append(chunk)
            continue
        pending.append(parts[0])
        parts[0] = "".join(pending)
        pending = [parts.pop()]
        if keepends:
            for part in parts:
                yield part + "\n"
        else:
            yield from parts
    last = "".join(pending)
    if last or not keepends:
        yield last


def _csv_lines(chunks: Iterable[str]) -> Iterator[str]:
    """Lines as the CSV reader needs them: ending at LF, CRLF or a lone CR (as a file
    opened with ``newline=""`` splits), each with its line ending."""
    for line in _lines(chunks, keepends=True):
        if "\r" in line and line.find("\r") != len(line) - 2:
            yield from filter(None, _AFTER_LONE_CR.split(line))
        else:
            yield line


def _detect_format(text: str, suffix: str, filename: str) -> tuple[str, str]:
    """Return ``(format, csv delimiter)``, format being "csv", "json" or "jsonl".

    ``text`` is the start of the file, up to the end of its first line that is not blank.
    """
    if suffix in _CSV_DELIMITERS:
        return "csv", _CSV_DELIMITERS[suffix]
    first = text[_LEADING_WHITESPACE.match(text).end()]
    if first == "[":
        return "json", ""
    if first == "{" or suffix in _JSON_SUFFIXES:
        return "jsonl", ""
    first_line = text.lstrip().split("\n", 1)[0]
    for delimiter in (",", "\t"):
        if delimiter in first_line:
            return "csv", delimiter
    raise UploadError(
        f"cannot tell the format of {filename!r}: expected CSV with a header row, JSON Lines "
        "(one object per line) or a JSON list of objects; name it .csv, .jsonl or .json"
    )


def _json_lines_records(
    lines: Iterable[str], whole_text: Callable[[], str]
) -> Iterator[tuple[int, int | None, Any]]:
    """Records of JSON Lines; ``whole_text`` is asked for the file only to explain a
    first record that does not parse."""
    loads = json.loads
    decode = json.JSONDecoder().raw_decode  # a third faster than loads on short lines
    first = True
    for line, raw in enumerate(lines, 1):
        # Bound the nesting before parsing: json recurses once per level. Counting brackets
        # is cheap, so only a line with many of them is scanned.
        if raw.count("[") + raw.count("{") > MAX_JSON_DEPTH and json_depth_exceeds(raw):
            deep = f"is nested more than {MAX_JSON_DEPTH} levels deep"
            yield line, None, RowError(line, None, deep)
            first = False
            continue
        try:
            value, end = decode(raw)
            if end == len(raw) or raw[end:].isspace():
                yield line, None, value
                first = False
                continue
        except (ValueError, RecursionError):
            pass
        # Leading whitespace, a blank line or an error: let loads decide and explain.
        if not raw or raw.isspace():
            continue
        try:
            value = loads(raw)
        except (ValueError, RecursionError) as exc:
            if first and _is_one_spread_object(whole_text()):
                yield (
                    line,
                    None,
                    RowError(
                        None,
                        None,
                        "the file holds one JSON object spread over several lines; "
                        "expected JSON Lines (one object per line) or a JSON list of objects",
                    ),
                )
                return
            yield line, None, RowError(line, None, f"is not valid JSON: {_json_reason(exc)}")
        else:
            yield line, None, value
        first = False


def _is_one_spread_object(text: str) -> bool:
    if json_depth_exceeds(text):
        return False
    try:
        return isinstance(json.loads(text), dict)
    except (ValueError, RecursionError):
        return False


def _json_list_records(chunks: Iterable[str]) -> Iterator[tuple[int, int | None, Any]]:
    """Walk a JSON list element by element as its text arrives, so each element's line is
    known and only the elements not yet walked are held as text.

    An element that fails to parse at the end of the text read so far may be cut off, so
    more text is read and it is tried again; an error elsewhere is an error. Each element
    is parsed by ``json`` (which says "nested too deeply" through ``RecursionError``).
    """
    decode = json.JSONDecoder().raw_decode
    separator = _JSON_LIST_SEPARATOR.match
    skip = _JSON_WHITESPACE.match
    chunks = iter(chunks)
    buf = ""
    pos = 0
    line, counted = 1, 0  # the line at buf[counted]
    column = 1  # the column of buf[0]
    eof = False

    def more() -> bool:
        """Append the next chunk, dropping text already walked; False at the end."""
        nonlocal buf, pos, counted, line, column, eof
        chunk = next(chunks, None)
        if chunk is None:
            eof = True
            return False
        line += buf.count("\n", counted, pos)
        newline = buf.rfind("\n", 0, pos)
        column = pos - newline if newline >= 0 else column + pos
        buf, pos, counted = buf[pos:] + chunk, 0, 0
        return True

    def grow() -> bool:
        """Read on until the unwalked text has doubled (so an element longer than a chunk is
        parsed a few times, not once per chunk); False at the end."""
        target = 2 * (len(buf) - pos) + 1
        grew = False
        while len(buf) - pos < target and more():
            grew = True
        return grew

    def at(position: int) -> int:
        """The line of ``buf[position]``; positions must only move forward."""
        nonlocal line, counted
        line += buf.count("\n", counted, position)
        counted = position
        return line

    def reason(exc: BaseException, position: int) -> str:
        newline = buf.rfind("\n", 0, position)
        return _json_reason(exc, position - newline if newline >= 0 else column + position)

    def skip_whitespace() -> None:
        nonlocal pos
        pos = skip(buf, pos).end()
        while pos == len(buf) and more():
            pos = skip(buf, pos).end()

    skip_whitespace()
    pos += 1  # the "[" that made this a JSON list
    skip_whitespace()
    index = 0
    if buf.startswith("]", pos):
        pos += 1
    else:
        while True:
            try:
                value, end = decode(buf, pos)
                if end == len(buf) and not eof and grow():
                    continue  # a number may go on in the next chunk
            except json.JSONDecodeError as exc:
                if not eof and (exc.pos >= len(buf) - 8 or exc.msg.startswith("Unterminated")):
                    if grow():
                        continue
                line_no = at(min(exc.pos, len(buf)))
                yield (
                    line_no,
                    index,
                    RowError(line_no, None, f"is not valid JSON: {reason(exc, exc.pos)}", index),
                )
                return
            except (RecursionError, ValueError) as exc:  # too deep; a number with too many digits
                line_no = at(pos)
                yield (
                    line_no,
                    index,
                    RowError(line_no, None, f"is not valid JSON: {_json_reason(exc)}", index),
                )
                return
            yield at(pos), index, value
            index += 1
            match = separator(buf, end)
            # Only whitespace after the element so far: its separator is in a later chunk.
            while match is None and not eof and not buf[end:].strip(" \t\n\r"):
                offset = end - pos
                if not more():
                    break
                end = pos + offset
                match = separator(buf, end)
            if match is None:
                line_no = at(end)
                yield (
                    line_no,
                    None,
                    RowError(
                        line_no,
                        None,
                        f"is not valid JSON: expected ',' or ']' after element {index - 1}",
                    ),
                )
                return
            pos = match.end()
            if match[1] == "]":
                break
            if pos == len(buf):
                skip_whitespace()
    skip_whitespace()
    if pos < len(buf):
        line_no = at(pos)
        yield (
            line_no,
            None,
            RowError(line_no, None, "is not valid JSON: text after the list's closing ']'"),
        )


def _json_reason(exc: BaseException, column: int | None = None) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} (column {exc.colno if column is None else column})"
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if isinstance(exc, ValueError) and "digits" in str(exc):
        return number_too_long()
    return str(exc)


def _csv_error(exc: csv.Error, line: int) -> RowError:
    message = str(exc)
    if "unexpected end of data" in message:
        message = "opens a quote that is never closed (the record runs to the end of the file)"
    elif "field larger than field limit" in message:
        message = (
            f"has a value longer than {csv.field_size_limit()} characters (an unclosed quote?)"
        )
    else:
        message = f"is not valid CSV: {message}"
    return RowError(line, None, message)


# ---------------------------------------------------------------------------------------
# Reading fields

_INVALID: Any = object()  # returned for a value that was reported as an error


class _Errors:
    def __init__(self, cap: int = MAX_REPORTED_ERRORS) -> None:
        self.cap = cap
        self.kept: list[RowError] = []
        self.total = 0

    def add(self, line: int | None, field: str | None, message: str, index: int | None) -> None:
        self.add_error(RowError(line, field, message, index))

    def add_error(self, error: RowError) -> None:
        self.total += 1
        if len(self.kept) < self.cap:
            self.kept.append(error)

    def raise_if_any(self) -> None:
        if self.total:
            raise UploadError(self.kept, self.total)


class _Row:
    """Typed access to one record's fields; each problem is recorded, not raised, so one
    pass finds every error in the file."""

    __slots__ = ("obj", "line", "index", "errors", "source", "ok")

    def __init__(
        self, obj: dict, line: int, index: int | None, errors: _Errors, source: _Source | None
    ) -> None:
        self.obj = obj
        self.line = line
        self.index = index
        self.errors = errors
        self.source = source
        self.ok = True

    def error(self, field: str | None, message: str) -> None:
        self.ok = False
        self.errors.add(self.line, field, message, self.index)

    def string(
        self,
        key: str,
        *,
        required: bool = False,
        max_length: int | None = None,
        allow_int: bool = False,
        strip: bool = True,
    ) -> str:
        value = self.obj.get(key, _MISSING)
        if value is _MISSING:
            if required:
                keys = ", ".join(repr(k) for k in self.obj) or "none"
                self.error(key, f"is missing (keys found: {keys})")
            return ""
        if value is None:
            value = ""
        elif allow_int and type(value) is int:
            value = str(value)
        elif not isinstance(value, str):
            self.error(key, f"must be a string, not {_type_name(value)}")
            return ""
        stripped = value.strip()
        if required and not stripped:
            self.error(key, "is empty")
            return ""
        if max_length is not None and len(stripped) > max_length:
            self.error(key, f"is {len(stripped)} characters long; the limit is {max_length}")
            return ""
        problem = text_problem(value) if self.source is None or self.source.check_text else None
        if problem:
            self.error(key, problem)
            return ""
        return stripped if strip else value

    def number(self, key: str, *, maximum: float) -> float | None:
        value = self._optional(key)
        if value is None:
            return None
        try:
            number = float(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError, OverflowError):
            return self._bad(key, "must be a number", value)
        if isinstance(value, bool) or not math.isfinite(number):
            return self._bad(key, "must be a number", value)
        if number < 0:
            return self._bad(key, "must not be negative", value)
        if number > maximum:
            return self._bad(key, f"must be at most {maximum:g}", value)
        return number

    def integer(self, key: str, *, maximum: int) -> int | None:
        value = self._optional(key)
        if value is None:
            return None
        number: float | int
        try:
            number = int(value.strip()) if isinstance(value, str) else value
        except ValueError:
            try:
                number = float(value)
            except ValueError:
                return self._bad(key, "must be a whole number", value)
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            return self._bad(key, "must be a whole number", value)
        if isinstance(number, float):
            if not number.is_integer():
                return self._bad(key, "must be a whole number", value)
            number = int(number)
        if number < 0:
            return self._bad(key, "must not be negative", value)
        if number > maximum:
            return self._bad(key, f"must be at most {maximum}", value)
        return number

    def tags(self, key: str) -> tuple[str, ...]:
        value = self._optional(key)
        if value is None:
            return ()
        if isinstance(value, str):
            items = value.split(TAG_SEPARATOR)
            if "," in value and self.source is not None:
                self.source.warn_comma_tags(self.line, self.index)
        elif isinstance(value, list):
            items = value
            for i, item in enumerate(items):
                if not isinstance(item, str):
                    self.error(key, f"item {i} must be a string, not {_type_name(item)}")
                    return ()
        else:
            self.error(
                key,
                f"must be a list of strings or a {TAG_SEPARATOR!r}-separated "
                f"string, not {_type_name(value)}",
            )
            return ()
        tags: dict[str, None] = {}
        for item in items:
            tag = item.strip()
            problem = text_problem(tag) if self.source is None or self.source.check_text else None
            if problem:
                self.error(key, f"tag {tag[:20]!r}… {problem}")
                return ()
            if len(tag) > MAX_TAG_LENGTH:
                self.error(
                    key,
                    f"tag {tag[:20]!r}… is {len(tag)} characters long; "
                    f"the limit is {MAX_TAG_LENGTH}",
                )
                return ()
            if tag:
                tags.setdefault(tag)
        return tuple(tags)

    def _optional(self, key: str) -> Any:
        value = self.obj.get(key)
        if isinstance(value, str) and not value.strip():
            return None
        return value

    def _bad(self, key: str, message: str, value: Any) -> Any:
        shown = (
            repr(value)
            if isinstance(value, (str, int, float)) and not isinstance(value, bool)
            else _type_name(value)
        )
        if len(shown) > 40:
            shown = shown[:39] + "…"
        self.error(key, f"{message}, not {shown}")
        return _INVALID


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _where(line: int, index: int | None) -> str:
    return f"line {line}" if index is None else f"line {line} (index {index})"


def _megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"
