"""Parse uploaded prompt, output and battle files, validating the whole file first.

Pure Python (the standard library and arena.outcomes, no Django import) so that views, management
commands and Celery tasks share one parser and the tests need no database.

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
Files over ``max_bytes`` (default :data:`MAX_UPLOAD_BYTES`) are refused before
decoding; pass ``max_bytes=None`` for trusted local files such as a Chatbot Arena dump.

Prompts (:func:`parse_prompts`)
    ``id`` (required, at most :data:`MAX_ID_LENGTH` characters, unique in the file; a
    JSON integer is accepted and turned into a string), ``prompt`` (required, surrounding
    whitespace stripped), and optional ``reference``, ``tags``, ``image`` (a relative
    path or URL, carried through unchecked) and ``gold_answer``. Tags are separated by
    ``;`` in CSV (``billing;easy``); in JSON they are a list of strings or one string
    separated by ``;`` the same way. Tags are stripped, empty ones dropped and exact
    duplicates removed, keeping the first spelling and the order. Other columns are
    ignored and reported in ``warnings``.

Imported outputs (:func:`parse_imported_outputs`)
    ``prompt_id`` (required), ``output`` (required, not blank; kept exactly as given),
    optional ``sample_index`` (integer >= 0, default 0), ``latency_ms`` and ``cost``
    (numbers >= 0) and ``prompt_tokens`` / ``completion_tokens`` (integers >= 0). A
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
from itertools import repeat
from operator import eq, itemgetter
from pathlib import PurePath
from typing import Any

from arena.outcomes import ARENA as ARENA_OUTCOMES

__all__ = [
    "BATTLE_WINNERS",
    "MAX_ID_LENGTH",
    "MAX_REPORTED_ERRORS",
    "MAX_TAG_LENGTH",
    "MAX_UPLOAD_BYTES",
    "TAG_SEPARATOR",
    "Battles",
    "ImportedOutputRow",
    "ParsedOutputs",
    "ParsedPrompts",
    "PromptRow",
    "RowError",
    "UploadError",
    "parse_battles",
    "parse_imported_outputs",
    "parse_prompts",
]

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_REPORTED_ERRORS = 50
MAX_ID_LENGTH = 200
MAX_TAG_LENGTH = 100
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
_LEADING_WHITESPACE = re.compile(r"\s*")
_JSON_WHITESPACE = re.compile(r"[ \t\n\r]*")
_JSON_LIST_SEPARATOR = re.compile(r"[ \t\n\r]*([,\]])[ \t\n\r]*")
_MISSING = object()


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
    data: bytes, filename: str, *, max_bytes: int | None = MAX_UPLOAD_BYTES
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
        image = row.string("image")
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
    data: bytes,
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
        sample_index = row.integer("sample_index")
        latency_ms = row.number("latency_ms")
        cost = row.number("cost")
        prompt_tokens = row.integer("prompt_tokens")
        completion_tokens = row.integer("completion_tokens")
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


def parse_battles(
    data: bytes, filename: str, *, max_bytes: int | None = MAX_UPLOAD_BYTES
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
        lambda: [line for line, _, _ in _json_list_records(text)],
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
    """A decoded file, its format, and the records in it."""

    def __init__(
        self,
        data: bytes,
        filename: str,
        *,
        required: Sequence[str],
        known: Sequence[str] | None,
        max_bytes: int | None,
    ) -> None:
        suffix = PurePath(filename or "").suffix.lower()
        if suffix in _REFUSED_SUFFIXES:
            raise UploadError(
                f"{suffix} files are not supported: export the sheet as CSV (UTF-8) "
                "or the data as JSON Lines"
            )
        if max_bytes is not None and len(data) > max_bytes:
            raise UploadError(
                f"the file is {_megabytes(len(data))}; the limit is {_megabytes(max_bytes)}"
            )
        self.text = _decode(data)
        self.required = tuple(required)
        self.known = None if known is None else frozenset(known)
        self.warnings: list[str] = []
        self._unknown_keys: set[str] = set()
        self._comma_tags_warned = False
        self.format, self.delimiter = _detect_format(self.text, suffix, filename)

    def records(self) -> Iterator[tuple[int, int | None, Any]]:
        """Yield ``(line, index, value)``; a value that is a :class:`RowError` is a
        record that could not be read at all."""
        if self.format == "csv":
            return self._csv_records()
        if self.format == "json":
            return _json_list_records(self.text)
        return _json_lines_records(self.text)

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
        reader = csv.reader(
            io.StringIO(self.text, newline=""), delimiter=self.delimiter, strict=True
        )
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
                if name and name not in self.known:
                    self.warnings.append(f"ignored column {name!r}")


def _decode(data: bytes) -> str:
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise UploadError('the file is UTF-16; save it as UTF-8 ("CSV UTF-8" in Excel)')
    start = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        text = str(memoryview(data)[start:], "utf-8")
    except UnicodeDecodeError as exc:
        offset = start + exc.start
        line = data.count(b"\n", 0, offset) + 1
        raise UploadError(
            [
                RowError(
                    line,
                    None,
                    f"the file is not UTF-8: byte 0x{data[offset]:02x} at byte "
                    f"offset {offset} cannot be decoded; save the file as UTF-8",
                )
            ]
        ) from None
    if not text or text.isspace():
        raise UploadError("the file is empty")
    return text


def _detect_format(text: str, suffix: str, filename: str) -> tuple[str, str]:
    """Return ``(format, csv delimiter)``, format being "csv", "json" or "jsonl"."""
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


def _json_lines_records(text: str) -> Iterator[tuple[int, int | None, Any]]:
    loads = json.loads
    decode = json.JSONDecoder().raw_decode  # a third faster than loads on short lines
    first = True
    # Split on "\n" only: str.splitlines() would also split on U+2028 and friends,
    # which JSON allows unescaped inside strings. A trailing "\r" is JSON whitespace.
    for line, raw in enumerate(text.split("\n"), 1):
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
            if first and _is_one_spread_object(text):
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
    try:
        return isinstance(json.loads(text), dict)
    except (ValueError, RecursionError):
        return False


def _json_list_records(text: str) -> Iterator[tuple[int, int | None, Any]]:
    """Walk a JSON list element by element, so each element's line is known."""
    decode = json.JSONDecoder().raw_decode
    separator = _JSON_LIST_SEPARATOR.match
    skip = _JSON_WHITESPACE.match
    pos = skip(text, skip(text).end() + 1).end()  # just past "[" and any whitespace
    line = 1 + text.count("\n", 0, pos)
    index = 0
    if text.startswith("]", pos):
        pos += 1
    else:
        while True:
            try:
                value, end = decode(text, pos)
            except (ValueError, RecursionError) as exc:
                at = getattr(exc, "lineno", line)
                yield (
                    at,
                    index,
                    RowError(at, None, f"is not valid JSON: {_json_reason(exc)}", index),
                )
                return
            yield line, index, value
            index += 1
            match = separator(text, end)
            if match is None:
                at = 1 + text.count("\n", 0, end)
                yield (
                    at,
                    None,
                    RowError(
                        at,
                        None,
                        f"is not valid JSON: expected ',' or ']' after element {index - 1}",
                    ),
                )
                return
            line += text.count("\n", pos, match.end())
            pos = match.end()
            if match[1] == "]":
                break
    pos = skip(text, pos).end()
    if pos < len(text):
        at = 1 + text.count("\n", 0, pos)
        yield at, None, RowError(at, None, "is not valid JSON: text after the list's closing ']'")


def _json_reason(exc: BaseException) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} (column {exc.colno})"
    if isinstance(exc, RecursionError):
        return "nested too deeply"
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
        return stripped if strip else value

    def number(self, key: str) -> float | None:
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
        return number

    def integer(self, key: str) -> int | None:
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
