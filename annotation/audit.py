"""The study's audit log: who changed what, and when.

Services call :func:`record` inside the transaction that makes the change, so a change
that fails leaves no entry and a change that commits always has one.  Nothing secret is
ever written: :func:`redact` hides the values of spec keys that name a credential.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .models import AuditEntry, Study

Action = AuditEntry.Action
SYSTEM = "system"
HIDDEN = "(set)"
PAGE_SIZE = 50

# Words in a key name that say its value is a credential.  Matched inside the name
# ("client_secret", "db_password") or as the end of one of its words ("api_key",
# "apiKey", "access_token"), so "tokenizer" and "max_new_tokens" stay visible.
_SECRET_PARTS = ("secret", "password", "passwd", "credential", "auth", "cookie", "bearer")
_SECRET_ENDINGS = ("key", "token", "pwd")
_WORDS = re.compile(r"[a-z0-9]+")


def record(study: Study, actor, action: str, target: str = "", detail: Mapping[str, Any] | None = None) -> AuditEntry:
    """Write one entry; call it inside the transaction of the change it describes.

    ``actor`` is the user who acted, or ``None`` for a system process (a worker, a
    command run without a user), which is shown as "system".
    """
    name = actor.get_username() if actor is not None else SYSTEM
    return AuditEntry.objects.create(
        study=study, actor=actor, actor_name=name[:150], action=action, target=str(target)[:200],
        detail=dict(detail or {}),
    )


def entries(study: Study):
    """The study's entries, newest first (ties broken by id, so pages never overlap)."""
    return AuditEntry.objects.filter(study=study).order_by("-at", "-id")


def change(old: Any, new: Any) -> dict[str, Any]:
    """One changed value, as stored in an entry's detail (shown as ``old → new``)."""
    return {"from": old, "to": new}


def changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The keys whose value differs between two mappings, each as :func:`change`."""
    return {k: change(old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}


def is_secret_key(name: str) -> bool:
    """Whether a spec key's value is a credential (``api_key_env`` holds a variable name: not secret)."""
    lowered = _camel_split(str(name)).lower()
    words = _WORDS.findall(lowered)
    if words and words[-1] == "env":
        return False
    return any(p in lowered for p in _SECRET_PARTS) or any(w.endswith(_SECRET_ENDINGS) for w in words)


def redact(value: Any) -> Any:
    """A copy of a spec (or any JSON value) safe to show: credential values become "(set)".

    Also hides a password written into a URL (``http://user:pw@host``).
    """
    if isinstance(value, Mapping):
        return {
            str(k): (HIDDEN if is_secret_key(k) and v not in (None, "") else redact(v)) for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return _redact_url(value)
    return value


def describe(detail: Mapping[str, Any]) -> list[str]:
    """An entry's detail as short lines for people (``key: old → new``, ``key: value``)."""
    return [f"{key}: {_show(value)}" for key, value in detail.items()]


def _show(value: Any) -> str:
    if isinstance(value, Mapping) and set(value) == {"from", "to"}:
        return f"{_show(value['from'])} → {_show(value['to'])}"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) + "}" if value else "{}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_show(v) for v in value) if value else "none"
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _camel_split(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name)


def _redact_url(text: str) -> str:
    if "@" not in text or "://" not in text:
        return text
    try:
        parts = urlsplit(text)
        if parts.password is None:
            return text
        host = parts.netloc.rsplit("@", 1)[1]
        return urlunsplit(parts._replace(netloc=f"{parts.username}:{HIDDEN}@{host}"))
    except ValueError:
        return HIDDEN
