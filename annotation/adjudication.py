"""Adjudication: send units the annotators disagree on to more annotators or to a named expert.

Nothing already judged is changed or deleted.  ``units_send_for_more`` raises the units'
``needed`` (and records the raise in ``Unit.extra``, so a later overlap change keeps it), and the
ordinary lease serves them again to annotators who have not met them.  ``units_send_to_expert``
reserves the units for one annotator, who is served them before anything else
(:func:`annotation.services._lease_reserved`); the expert's verdict is an ordinary judgment,
counted as one more judgment in ratings and summaries and marked as the adjudicated label of
its unit through its :class:`~annotation.models.Adjudication` row.
"""
from __future__ import annotations

from collections.abc import Iterable

from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from . import audit
from .models import Adjudication, Assignment, Candidate, Study, StudyMember, Unit
from .services import ServiceError

MAX_EXTRA = 10


def parse_unit_ids(raw: str | Iterable) -> list[int]:
    """Unit ids from "3, 5,8" (or an iterable); names the first piece that is not a whole number."""
    pieces = raw.replace(";", ",").split(",") if isinstance(raw, str) else list(raw)
    ids: list[int] = []
    for piece in pieces:
        text = str(piece).strip()
        if not text:
            continue
        if not text.isascii() or not text.isdigit():
            raise ServiceError(f"unit id {text[:40]!r} is not a whole number")
        if len(text) > 15:  # beyond any id (and beyond what the database's integers hold)
            raise ServiceError(f"no unit {text[:40]} in this study")
        ids.append(int(text))
    if not ids:
        raise ServiceError("no unit ids given")
    return sorted(set(ids))


def _units(study: Study, unit_ids: Iterable[int]) -> list[Unit]:
    """The study's units with these ids, locked; refuses ids that are unknown or of another study,
    checks and units closed for good (hidden candidates, ties by rule), naming them."""
    ids = sorted(set(int(i) for i in unit_ids))
    if not ids:
        raise ServiceError("no unit ids given")
    units = list(Unit.objects.select_for_update().filter(study=study, pk__in=ids).order_by("pk"))
    missing = sorted(set(ids) - {u.pk for u in units})
    if missing:
        raise ServiceError(f"no unit {_list(missing)} in this study")
    checks = [u.pk for u in units if u.is_gold]
    if checks:
        raise ServiceError(f"unit {_list(checks)} is a gold item or attention check, not a task to adjudicate")
    ties = [u.pk for u in units if u.rule_tie]
    if ties:
        raise ServiceError(f"unit {_list(ties)} is a tie by rule (identical outputs), never served")
    hidden = set(Candidate.objects.filter(study=study, hidden=True).values_list("pk", flat=True))
    closed = [u.pk for u in units if u.cand_lo_id in hidden or u.cand_hi_id in hidden]
    if closed:
        raise ServiceError(f"unit {_list(closed)} belongs to a candidate hidden from new pairs")
    return units


def _list(ids: list[int], limit: int = 10) -> str:
    shown = ", ".join(str(i) for i in ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def units_send_for_more(*, study: Study, unit_ids: Iterable[int], extra: int, actor=None) -> int:
    """Ask ``extra`` more judgments of each unit, from annotators who have not judged it.

    The units' ``needed`` (and ``extra``) go up by ``extra``; the ordinary lease then serves
    them again, never to an annotator who met them (judged, skipped or holds them).  All or
    nothing: one bad id and no unit changes.  Returns the number of units sent.
    """
    if isinstance(extra, bool) or not isinstance(extra, int) or not 1 <= extra <= MAX_EXTRA:
        raise ServiceError(f"extra must be a whole number from 1 to {MAX_EXTRA}, not {extra!r}")
    with transaction.atomic():
        units = _units(study, unit_ids)
        full = [u.pk for u in units if u.needed + extra > 32767]
        if full:
            raise ServiceError(f"unit {_list(full)} cannot take {extra} more judgments")
        Unit.objects.filter(pk__in=[u.pk for u in units]).update(needed=F("needed") + extra,
                                                                 extra=F("extra") + extra)
        audit.record(study, actor, audit.Action.UNITS_SENT_FOR_MORE, f"{len(units)} units",
                     {"units": [u.pk for u in units], "extra": extra})
    return len(units)


def units_send_to_expert(*, study: Study, unit_ids: Iterable[int], expert, actor=None) -> int:
    """Reserve units for a named expert, who is served them before any other task.

    The expert must be an annotator of the study, not excluded, and must not have judged these
    units already.  Their verdict is an ordinary judgment (one more vote on the unit; the
    judgments before it stay as they were).  Units already reserved for this expert are left
    as they are.  All or nothing.  Returns how many reservations were added.
    """
    if isinstance(expert, str):
        user = get_user_model().objects.filter(**{get_user_model().USERNAME_FIELD: expert}).first()
        if user is None:
            raise ServiceError(f"no user named {expert[:150]!r}")
        expert = user
    name = expert.get_username()
    member = StudyMember.objects.filter(study=study, user=expert).first()
    if member is None or member.role != StudyMember.Role.ANNOTATOR:
        raise ServiceError(f"{name} is not an annotator of this study; add them as an annotator first")
    if member.excluded:
        raise ServiceError(f"{name} is excluded from this study")
    now = timezone.now()
    with transaction.atomic():
        units = _units(study, unit_ids)
        ids = [u.pk for u in units]
        met = sorted(set(Assignment.objects.filter(unit_id__in=ids, annotator=expert, submitted_at__isnull=False)
                         .values_list("unit_id", flat=True)))
        if met:
            raise ServiceError(f"{name} has already answered unit {_list(met)}")
        already = set(Adjudication.objects.filter(unit_id__in=ids, expert=expert).values_list("unit_id", flat=True))
        rows = [Adjudication(study=study, unit_id=pk, expert=expert, requested_by=actor, requested_at=now)
                for pk in ids if pk not in already]
        Adjudication.objects.bulk_create(rows)
        if rows:
            Study.objects.filter(pk=study.pk).update(adjudications_open=F("adjudications_open") + len(rows))
        audit.record(study, actor, audit.Action.UNITS_SENT_TO_EXPERT, name,
                     {"units": ids, "added": len(rows)})
    return len(rows)


def adjudicated_labels(study_id: int) -> dict[int, dict]:
    """unit id -> {"expert": username, "outcome": ..., "ratings": ..., "judgment": id} for the units an
    expert has answered (the newest reservation's verdict when there are several)."""
    from .models import Judgment

    reserved = Adjudication.objects.filter(study_id=study_id).values_list("unit_id", "expert_id")
    pairs = set(reserved)
    if not pairs:
        return {}
    out: dict[int, dict] = {}
    judged = (Judgment.objects.filter(study_id=study_id, unit_id__in={u for u, _ in pairs})
              .values_list("unit_id", "annotator_id", "annotator__username", "outcome", "ratings", "pk")
              .order_by("pk"))
    for unit_id, annotator_id, username, outcome, ratings, pk in judged:
        if (unit_id, annotator_id) in pairs:
            out[unit_id] = {"expert": username, "outcome": outcome, "ratings": ratings, "judgment": pk}
    return out
