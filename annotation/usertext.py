"""Checks on text that people give the site: forms, uploads, specs, URLs, credentials.

Pure Python (no Django import), so the upload parser, the forms, the API and the sign-in
backend share one definition of what cannot be stored:

* a NUL character: PostgreSQL refuses it in ``text`` and ``jsonb`` values;
* a lone surrogate (``"\\ud800"``, from a JSON escape): it is not Unicode, so no database
  driver can encode it and no page can show it;
* JSON nested deeper than a small bound: Python's ``json`` recurses once per level, and a
  spec nested 100,000 deep would otherwise end in ``RecursionError``;
* a JSON number that is not finite (``1e400``, ``NaN``, ``Infinity``, which Python reads
  but PostgreSQL's ``jsonb`` refuses).

Each check returns a message that reads after the field's name ("spec['model']: contains
a NUL character ..."), or ``None`` when the value is fine.
"""

from __future__ import annotations

import json
import math
import re
import sys
from typing import Any

__all__ = [
    "MAX_JSON_DEPTH",
    "JSONTextError",
    "json_depth_exceeds",
    "json_value_problem",
    "loads",
    "number_too_long",
    "text_problem",
]

MAX_JSON_DEPTH = 32

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# A JSON string (escapes included) or one bracket; strings are skipped when counting depth.
_JSON_STRING_OR_BRACKET = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)


class JSONTextError(ValueError):
    """JSON text that was refused; the message reads after the field's name."""


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored as text, or ``None``."""
    match = _UNSTORABLE.search(value)
    if match is None:
        return None
    char, at = match.group(), match.start() + 1
    if char == "\x00":
        return f"contains a NUL character (\\x00) at character {at}, which cannot be stored"
    return (
        f"contains a lone surrogate (\\u{ord(char):04x}) at character {at}, which is not "
        "valid Unicode; the text was probably cut in the middle of a character"
    )


def number_too_long() -> str:
    """What to say when ``json`` refuses an integer for its digits (Python's DoS guard)."""
    return f"a number has more than {sys.get_int_max_str_digits()} digits"


def json_depth_exceeds(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the JSON ``text`` nests arrays and objects more than ``limit`` deep.

    Counts brackets outside strings without parsing, so it is safe on any input; text
    with few brackets is answered without a scan.
    """
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    for match in _JSON_STRING_OR_BRACKET.finditer(text):
        token = match.group()
        if token == "[" or token == "{":
            depth += 1
            if depth > limit:
                return True
        elif token == "]" or token == "}":
            depth -= 1
    return False


def json_value_problem(value: Any, limit: int = MAX_JSON_DEPTH) -> tuple[str, str] | None:
    """The first string (key or value) or number in parsed JSON that cannot be stored, or
    nesting beyond ``limit``: ``(path, message)`` with a path such as ``['model']`` or
    ``[2]``, or ``None``. Walks without recursion."""
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            problem = text_problem(item)
            if problem:
                return path, problem
        elif isinstance(item, float) and not math.isfinite(item):
            return path, f"is {item}, which JSON cannot hold (a number too large, NaN or Infinity)"
        elif isinstance(item, (dict, list)):
            if depth >= limit:
                return path, f"is nested more than {limit} levels deep"
            if isinstance(item, dict):
                for key, child in reversed(item.items()):
                    problem = text_problem(key)
                    if problem:
                        return path, f"has a key that {problem}"
                    stack.append((child, f"{path}[{key!r}]", depth + 1))
            else:
                for i in range(len(item) - 1, -1, -1):
                    stack.append((item[i], f"{path}[{i}]", depth + 1))
    return None


def loads(text: str, *, limit: int = MAX_JSON_DEPTH) -> Any:
    """Parse JSON that a person gave: bounded depth, storable strings.

    Raises :class:`JSONTextError` saying where the text is wrong.
    """
    if json_depth_exceeds(text, limit):
        raise JSONTextError(f"is nested more than {limit} levels deep")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise JSONTextError(
            f"is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:  # not reached after the depth check; kept as a backstop
        raise JSONTextError(f"is nested more than {limit} levels deep") from None
    except ValueError:  # an integer beyond Python's digit limit for parsing
        raise JSONTextError(f"is not valid JSON: {number_too_long()}") from None
    found = json_value_problem(value, limit)
    if found:
        path, problem = found
        raise JSONTextError(f"{path}: {problem}" if path else problem)
    return value
