"""Reads behind the API's exports and lists, turned into plain rows."""
from __future__ import annotations

from collections.abc import Iterator

from django.contrib.auth import get_user_model
from django.db import connection
from django.utils.crypto import salted_hmac

from arena import outcomes

from ..models import Judgment, Study, StudyMember, Unit

EXPORT_CHUNK = 2000
_PSEUDONYM_SALT = "evalsite.api.judgments.pseudonym"


def pseudonym(study_id: int, user_id: int) -> str:
    """A stable stand-in for an annotator within one study: an HMAC of (study, user) keyed by
    ``SECRET_KEY``, so it is the same in every export of the study and cannot be linked across studies
    or turned back into the account by anyone without the key."""
    return "annotator-" + salted_hmac(_PSEUDONYM_SALT, f"{study_id}:{user_id}").hexdigest()[:16]


def judgment_rows(study: Study, *, pseudonymize: bool = False, chunk: int = EXPORT_CHUNK) -> Iterator[dict]:
    """Every judgment of the study but answers to checks, oldest id first, as the rows of
    :mod:`annotation.exchange`.

    Read in keyset chunks of ``chunk`` judgments (``id > last``), so memory holds one chunk
    whatever the study's size and no cursor stays open between chunks.  Judgments committed
    while the export runs may or may not be in it.
    """
    members = dict(StudyMember.objects.filter(study=study).values_list("user_id", "excluded"))
    names: dict[int, str] = {}
    username = get_user_model().USERNAME_FIELD
    fields = ("id", "unit__kind", "unit__prompt__external_id", "unit__output_a__sample_index",
              "unit__output_a__candidate__name", "unit__output_b__candidate__name", "left_is_a", "outcome", "ratings",
              "tags", "rationale", "served_at", "submitted_at", "active_ms", "annotator_id", f"annotator__{username}")
    last = 0
    while True:
        # answers to gold items and attention checks measure the annotators, not the models: the
        # checks page reads them, the export leaves them out (an import would take them for votes)
        batch = list(Judgment.objects.filter(study=study, id__gt=last, unit__is_gold=False).order_by("id")
                     .values_list(*fields)[:chunk])
        if not batch:
            return
        for (pk, kind, prompt_id, sample, model_a, model_b, left_is_a, outcome, ratings, tags, rationale, served_at,
             submitted_at, active_ms, user_id, name) in batch:
            if pseudonymize:
                name = names.get(user_id) or names.setdefault(user_id, pseudonym(study.pk, user_id))
            likert = kind == Unit.Kind.LIKERT
            code = None if likert else outcomes.STORED_CODE[outcome]
            yield {
                "kind": kind, "prompt_id": prompt_id, "sample_index": sample, "model_a": model_a,
                "model_b": None if likert else model_b,
                "shown_left": None if likert else (model_a if left_is_a else model_b),
                "outcome": None if likert else outcome, "winner": None if likert else outcomes.ARENA[code],
                "ratings": ratings if likert else None, "tags": list(tags or ()),
                "rationale": rationale, "served_at": served_at, "submitted_at": submitted_at,
                "active_ms": active_ms, "annotator": name, "excluded": bool(members.get(user_id, False)),
            }
        last = batch[-1][0]


def rating_keys(study: Study) -> list[str]:
    """The criteria an export's CSV gives a ``rating:<key>`` column: the study's, in its order, then
    any other key a judgment was rated on (criteria can change after judgments keep theirs)."""
    keys = [c["key"] for c in study.likert_criteria or ()]
    table = Judgment._meta.db_table
    if connection.vendor == "postgresql":
        sql = (f"SELECT DISTINCT jsonb_object_keys(ratings) FROM {table} "
               "WHERE study_id = %s AND jsonb_typeof(ratings) = 'object'")
    else:
        sql = (f"SELECT DISTINCT r.key FROM {table}, json_each({table}.ratings) r "
               f"WHERE {table}.study_id = %s AND json_type({table}.ratings) = 'object'")
    with connection.cursor() as cur:
        cur.execute(sql, [study.pk])
        stored = {key for (key,) in cur.fetchall()}
    return keys + sorted(stored - set(keys))
