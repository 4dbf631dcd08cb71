"""Whose judgments count in a study's ratings and Likert means (``Study.ratings_mode``).

"all": every annotator not excluded by hand.  "exclude_flagged": also leaves out the
annotators the agreement snapshot or the quality table flags (``StudyMember.excluded`` is not
touched: manual exclusion stays separate).  "competence" weighs each annotator's pairwise
judgments by their Dawid-Skene skill in the Bradley-Terry fit and their Likert points in the
criterion means (weight 1 for annotators the agreement snapshot does not rate); tag rates count
every rated output once.  Every page that shows ratings says which mode it used.
"""
from __future__ import annotations

from annotation.models import Study

from .models import RatingSnapshot

AGREEMENT = "agreement"  # the agreement snapshot's method (metrics.agreement_service)
QUALITY = "quality"


def _rows(payload) -> dict[int, dict]:
    """Annotator id -> row of a snapshot payload's ``annotators``, which the quality table keys by
    id (``{"12": {...}}``) and the agreement snapshot lists (``[{"user_id": 12, ...}]``); read
    defensively, so a missing or older payload means no rows."""
    annotators = payload.get("annotators") if isinstance(payload, dict) else None
    rows: dict[int, dict] = {}
    if isinstance(annotators, dict):
        for key, row in annotators.items():
            if isinstance(row, dict) and str(key).isdigit():
                rows[int(key)] = row
    elif isinstance(annotators, list):
        for row in annotators:
            if isinstance(row, dict) and isinstance(row.get("user_id"), int):
                rows[row["user_id"]] = row
    return rows


def _flagged(payload) -> set[int]:
    """Annotator ids whose ``flags`` list is non-empty in a snapshot payload."""
    return {user_id for user_id, row in _rows(payload).items() if row.get("flags")}


def competence_weights(study_id: int) -> dict[int, float]:
    """Annotator id -> Dawid-Skene skill in [0, 1] from the agreement snapshot, for those it rated
    (``competence`` as a number, or ``{"dawid_skene": x}``: the snapshot's mean skill over the pairwise
    choice and the Likert criteria the annotator answered); annotators not in it weigh 1.  Only the
    snapshot's annotator rows are read, not its kappas."""
    annotators = RatingSnapshot.objects.filter(study_id=study_id, slice_key="all", method=AGREEMENT).values_list(
        "payload__annotators", flat=True).first()
    weights: dict[int, float] = {}
    for user_id, row in _rows({"annotators": annotators}).items():
        value = row.get("competence")
        if isinstance(value, dict):
            value = value.get("dawid_skene")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0:
            weights[user_id] = float(value)
    return weights


def flagged_annotators(study_id: int) -> set[int]:
    """Annotators flagged by the agreement snapshot or the quality table (none without snapshots)."""
    payloads = RatingSnapshot.objects.filter(study_id=study_id, slice_key="all",
                                             method__in=(AGREEMENT, QUALITY)).values_list("payload", flat=True)
    flagged: set[int] = set()
    for payload in payloads:
        flagged |= _flagged(payload)
    return flagged


def mode_info(study: Study) -> dict:
    """{"mode", "left_out": sorted annotator ids, "weights": {id: weight} (competence mode; ids as
    strings, JSON's keys), "sentence"}: stored with each snapshot, and shown by the pages that read it."""
    mode = study.ratings_mode or Study.RatingsMode.ALL
    if mode == Study.RatingsMode.EXCLUDE_FLAGGED:
        left_out = sorted(flagged_annotators(study.pk))
        return {"mode": mode, "left_out": left_out, "weights": {},
                "sentence": f"Flagged annotators left out ({len(left_out)})."}
    if mode == Study.RatingsMode.COMPETENCE:
        estimated = competence_weights(study.pk)
        weights = {str(k): v for k, v in sorted(estimated.items()) if v != 1.0}
        if not estimated:
            return {"mode": mode, "left_out": [], "weights": {},
                    "sentence": "Ratings weighted by annotator competence: every annotator weighs 1 for now, as "
                                "there is no competence estimate yet (it needs units judged by two annotators or "
                                "more, with some disagreement)."}
        return {"mode": mode, "left_out": [], "weights": weights,
                "sentence": "Ratings weighted by annotator competence (Dawid-Skene skill, the mean over the "
                            f"pairwise choice and Likert criteria each annotator answered; {len(weights)} of "
                            f"{len(estimated)} annotators with an estimate weigh less than 1), in the ratings and "
                            "the Likert means."}
    return {"mode": Study.RatingsMode.ALL, "left_out": [], "weights": {}, "sentence": "All annotators counted."}


def sentence(payload: dict | None) -> str:
    """What a stored snapshot says about whose judgments it counted (older snapshots: all)."""
    info = (payload or {}).get("ratings_mode") if isinstance(payload, dict) else None
    if isinstance(info, dict) and info.get("sentence"):
        return str(info["sentence"])
    return "All annotators counted."
