"""What a study asks its annotators: task kinds, Likert criteria, failure tags, rationale.

Pure Python (no Django import): the one place these settings and the answers to them are
checked, by the study forms, the services and the API alike.  Every message names the field
(and the criterion or tag) that is wrong.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

KINDS = ("pairwise", "likert", "both")
RATIONALE = ("off", "optional", "required")
MIN_SCALE, MAX_SCALE = 2, 10
MAX_CRITERIA = 12
MAX_NAME = 100
# Krippendorff's levels of measurement a criterion's agreement may be computed at (the
# agreement page); a criterion without ``level`` is ordinal
LEVELS = ("nominal", "ordinal", "interval", "ratio")
# a key is what the API and the exports carry: short, lower case, no spaces
_KEY = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
# tag shortcut letters: every letter but the ones the task page keeps ("n": not applicable on
# a Likert task, "s": skip, "u": undo)
TAG_KEYS = "qwertyiopadfghjklzxcvbm"


class ConfigError(ValueError):
    """A bad setting or answer; the message names the field and what to change."""


def _text(value, where: str, *, limit: int = MAX_NAME) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where} must be non-empty text")
    value = value.strip()
    if len(value) > limit:
        raise ConfigError(f"{where} is {len(value)} characters long; at most {limit}")
    return value


def _key(value, where: str, seen: set[str]) -> str:
    if not isinstance(value, str) or not _KEY.match(value):
        raise ConfigError(f"{where} must be a short key: a lower-case letter, then letters, digits or _ "
                          f"(at most 40), e.g. \"factuality\"; got {value!r}")
    if value in seen:
        raise ConfigError(f"{where} {value!r} is used twice; keys must differ")
    seen.add(value)
    return value


def kinds_validate(value) -> str:
    if value not in KINDS:
        raise ConfigError(f"task_kinds must be one of {', '.join(KINDS)}; got {value!r}")
    return value


def rationale_validate(value) -> str:
    if value not in RATIONALE:
        raise ConfigError(f"ask_rationale must be one of {', '.join(RATIONALE)}; got {value!r}")
    return value


def criteria_validate(value) -> list[dict]:
    """``[{key, name, scale, labels, allow_na[, level]}]`` checked and normalised (``allow_na`` defaults
    to false; ``level``, the level of measurement of its agreement, is kept only when given: ordinal
    without it)."""
    if not isinstance(value, list):
        raise ConfigError("likert_criteria must be a JSON list of criteria")
    if len(value) > MAX_CRITERIA:
        raise ConfigError(f"likert_criteria has {len(value)} criteria; at most {MAX_CRITERIA}")
    seen: set[str] = set()
    out = []
    for i, raw in enumerate(value, 1):
        where = f"likert_criteria[{i}]"
        if not isinstance(raw, dict):
            raise ConfigError(f"{where} must be an object with key, name, scale and labels")
        unknown = set(raw) - {"key", "name", "scale", "labels", "allow_na", "level"}
        if unknown:
            raise ConfigError(f"{where} has unknown fields: {', '.join(sorted(unknown))}")
        key = _key(raw.get("key"), f"{where}.key", seen)
        where = f"likert_criteria {key!r}"
        name = _text(raw.get("name"), f"{where} name")
        scale = raw.get("scale")
        if not isinstance(scale, int) or isinstance(scale, bool) or not MIN_SCALE <= scale <= MAX_SCALE:
            raise ConfigError(f"{where} scale must be a whole number from {MIN_SCALE} to {MAX_SCALE}; got {scale!r}")
        labels = raw.get("labels")
        if not isinstance(labels, list) or len(labels) != scale:
            raise ConfigError(f"{where} needs {scale} labels, one for each point 1..{scale}")
        labels = [_text(label, f"{where} label {n}") for n, label in enumerate(labels, 1)]
        allow_na = raw.get("allow_na", False)
        if not isinstance(allow_na, bool):
            raise ConfigError(f"{where} allow_na must be true or false")
        criterion = {"key": key, "name": name, "scale": scale, "labels": labels, "allow_na": allow_na}
        if "level" in raw:
            if raw["level"] not in LEVELS:
                raise ConfigError(f"{where} level must be one of {', '.join(LEVELS)}; got {raw['level']!r}")
            criterion["level"] = raw["level"]
        out.append(criterion)
    return out


def tags_validate(value) -> list[dict]:
    """``[{key, label}]`` checked; each tag gets a shortcut letter by position (see :data:`TAG_KEYS`)."""
    if not isinstance(value, list):
        raise ConfigError("failure_tags must be a JSON list of tags")
    if len(value) > len(TAG_KEYS):
        raise ConfigError(f"failure_tags has {len(value)} tags; at most {len(TAG_KEYS)} (one key each)")
    seen: set[str] = set()
    out = []
    for i, raw in enumerate(value, 1):
        where = f"failure_tags[{i}]"
        if not isinstance(raw, dict) or set(raw) - {"key", "label"}:
            raise ConfigError(f"{where} must be an object with key and label only")
        key = _key(raw.get("key"), f"{where}.key", seen)
        out.append({"key": key, "label": _text(raw.get("label"), f"failure_tags {key!r} label")})
    return out


def config_validate(*, task_kinds, likert_criteria, failure_tags, ask_rationale) -> dict:
    """The four settings together: a study with Likert tasks needs at least one criterion."""
    config = {
        "task_kinds": kinds_validate(task_kinds),
        "likert_criteria": criteria_validate(likert_criteria),
        "failure_tags": tags_validate(failure_tags),
        "ask_rationale": rationale_validate(ask_rationale),
    }
    if config["task_kinds"] != "pairwise" and not config["likert_criteria"]:
        raise ConfigError(f"likert_criteria: task_kinds {config['task_kinds']!r} needs at least one criterion")
    return config


def tag_letters(tags: Sequence[Mapping]) -> list[dict]:
    """The tags with the letter that toggles each on the task page."""
    return [{**tag, "letter": TAG_KEYS[i]} for i, tag in enumerate(tags)]


def ratings_validate(criteria: Sequence[Mapping], ratings) -> dict:
    """An annotator's ratings checked against the criteria: every criterion answered, each a
    point on its scale or null ("not applicable") where the criterion allows it."""
    if not isinstance(ratings, Mapping):
        raise ConfigError("ratings must be an object: {criterion key: point}")
    known = {c["key"] for c in criteria}
    unknown = sorted(set(ratings) - known)
    if unknown:
        raise ConfigError(f"ratings: unknown criterion {unknown[0]!r}; this study rates "
                          f"{', '.join(sorted(known)) or 'nothing'}")
    out = {}
    for c in criteria:
        key = c["key"]
        if key not in ratings:
            raise ConfigError(f"ratings: criterion {key!r} ({c['name']}) is not rated")
        value = ratings[key]
        if value is None:
            if not c["allow_na"]:
                raise ConfigError(f"ratings: criterion {key!r} ({c['name']}) has no \"not applicable\"; "
                                  f"give a point from 1 to {c['scale']}")
            out[key] = None
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= c["scale"]:
            raise ConfigError(f"ratings: criterion {key!r} ({c['name']}) is rated {value!r}; "
                              f"give a point from 1 to {c['scale']}"
                              + (" or null for not applicable" if c["allow_na"] else ""))
        out[key] = value
    return out


def tags_check(tags_config: Sequence[Mapping], tags) -> list[str]:
    """The chosen tag keys, each known to the study, in the study's order, without repeats."""
    if tags is None:
        return []
    if not isinstance(tags, (list, tuple)) or not all(isinstance(t, str) for t in tags):
        raise ConfigError("tags must be a list of tag keys")
    known = [t["key"] for t in tags_config]
    for tag in tags:
        if tag not in known:
            raise ConfigError(f"tags: unknown tag {tag!r}; this study's tags are {', '.join(known) or 'none'}")
    return [k for k in known if k in set(tags)]


def rationale_check(ask_rationale: str, rationale: str) -> str:
    rationale = (rationale or "").strip()
    if ask_rationale == "required" and not rationale:
        raise ConfigError("rationale: this study asks for a reason with every judgment; write one")
    return rationale
