"""Reads behind the API's exports and lists, turned into plain rows."""
from __future__ import annotations

from collections.abc import Iterator

from django.contrib.auth import get_user_model
from django.utils.crypto import salted_hmac

from arena import outcomes

from ..models import Judgment, Study, StudyMember

EXPORT_CHUNK = 2000
_PSEUDONYM_SALT = "evalsite.api.judgments.pseudonym"


def pseudonym(study_id: int, user_id: int) -> str:
    """A stable stand-in for an annotator within one study: an HMAC of (study, user) keyed by
    ``SECRET_KEY``, so it is the same in every export of the study and cannot be linked across studies
    or turned back into the account by anyone without the key."""
    return "annotator-" + salted_hmac(_PSEUDONYM_SALT, f"{study_id}:{user_id}").hexdigest()[:16]


def judgment_rows(study: Study, *, pseudonymize: bool = False, chunk: int = EXPORT_CHUNK) -> Iterator[dict]:
    """Every judgment of the study, oldest id first, as the rows of :mod:`annotation.exchange`.

    Read in keyset chunks of ``chunk`` judgments (``id > last``), so memory holds one chunk
    whatever the study's size and no cursor stays open between chunks.  Judgments committed
    while the export runs may or may not be in it.
    """
    members = dict(StudyMember.objects.filter(study=study).values_list("user_id", "excluded"))
    names: dict[int, str] = {}
    username = get_user_model().USERNAME_FIELD
    fields = ("id", "unit__prompt__external_id", "unit__output_a__sample_index", "unit__output_a__candidate__name",
              "unit__output_b__candidate__name", "left_is_a", "outcome", "rationale", "served_at", "submitted_at",
              "active_ms", "annotator_id", f"annotator__{username}")
    last = 0
    while True:
        # pairwise verdicts only: Likert ratings are summarised on the leaderboard (metrics.likert)
        batch = list(Judgment.objects.filter(study=study, id__gt=last).exclude(outcome="").order_by("id")
                     .values_list(*fields)[:chunk])
        if not batch:
            return
        for (pk, prompt_id, sample, model_a, model_b, left_is_a, outcome, rationale, served_at, submitted_at,
             active_ms, user_id, name) in batch:
            if pseudonymize:
                name = names.get(user_id) or names.setdefault(user_id, pseudonym(study.pk, user_id))
            code = outcomes.STORED_CODE[outcome]
            yield {
                "prompt_id": prompt_id, "sample_index": sample, "model_a": model_a, "model_b": model_b,
                "shown_left": model_a if left_is_a else model_b, "outcome": outcome, "winner": outcomes.ARENA[code],
                "rationale": rationale, "served_at": served_at, "submitted_at": submitted_at,
                "active_ms": active_ms, "annotator": name, "excluded": bool(members.get(user_id, False)),
            }
        last = batch[-1][0]
