"""Reads for the metrics dashboards: turn judgments into the plain inputs of the math modules."""
from __future__ import annotations

from dataclasses import asdict
from itertools import repeat

from django.db.models import Count, Max

from annotation.models import Study

from . import likert

INTERVAL = "Student t, 95%"


def _finite(value: float) -> float | None:
    return None if value != value else round(value, 4)  # NaN -> None (JSON has no NaN)


def likert_config(study: Study) -> tuple[list[dict], list[dict]]:
    """The criteria and tags a Likert summary is laid out by (what a stored one is checked against)."""
    criteria = [{"key": c["key"], "name": c["name"], "scale": c["scale"], "labels": list(c["labels"])}
                for c in study.likert_criteria]
    tags = [{"key": t["key"], "label": t["label"]} for t in study.failure_tags]
    return criteria, tags


def likert_judgments(study_id: int, slice_key: str = "all", left_out=()):
    """The Likert judgments of a slice (excluded annotators left out, and those in ``left_out``:
    the study's ratings mode, :mod:`arena.modes`)."""
    from arena.selectors import slice_judgments

    qs = slice_judgments(study_id, slice_key).filter(ratings__isnull=False)
    return qs.exclude(annotator_id__in=list(left_out)) if left_out else qs


def likert_marker(study_id: int, slice_key: str = "all", left_out=()) -> tuple[int, int]:
    """(count, newest id) of a slice's Likert judgments: one aggregate, which the worker compares with
    what its snapshot summarised (a count, so a judgment that commits after a newer one is noticed)."""
    agg = likert_judgments(study_id, slice_key, left_out).order_by().aggregate(n=Count("id"), last=Max("id"))
    return agg["n"], agg["last"] or 0


def likert_summary(study: Study, slice_key: str = "all", left_out=(), weights=None) -> dict:
    """Likert criteria per candidate and tag rates per candidate, as JSON-ready data.

    Excluded annotators' judgments are left out, as on the leaderboard.  Tag rates are
    over rated outputs (Likert judgments), the only judgments a tag can be pinned on one
    candidate by.  One ``GROUP BY`` over the slice's Likert judgments by (candidate,
    ratings, tags): the rows read grow with the distinct answers, not the judgments.  The
    aggregation worker calls this (:func:`arena.services.ratings_recompute`); pages and the
    API read what it stored.  ``weights`` ({annotator id: weight}, the competence mode of
    :mod:`arena.modes`; 1 for annotators not in it) weight the criterion means; the grouping
    then adds the annotator, and tag rates still count every rated output once.
    """
    by = ["unit__output_a__candidate__name", "ratings", "tags", "unit__output_a_id"] + (
        ["annotator_id"] if weights else [])
    rows = list(likert_judgments(study.pk, slice_key, left_out).order_by().values_list(*by)
                .annotate(n=Count("id"), last=Max("id")))
    if weights:
        rows = [(c, r, t, o, n, last, float(weights.get(a, 1.0))) for c, r, t, o, a, n, last in rows]
    else:
        rows = [(c, r, t, o, n, last, 1.0) for c, r, t, o, n, last in rows]
    criteria, tags = likert_config(study)
    answers = [(c, r, t, o, w) for c, r, t, o, n, _, w in rows for _ in repeat(None, n)]
    summaries = likert.summarize(criteria, ((c, r, w) if weights else (c, r) for c, r, _, _, w in answers))
    # the output rated: an output rated by several annotators is one cluster of the tag rate's interval
    rates = likert.tag_rates([t["key"] for t in tags], ((c, t or [], o) for c, _, t, o, _ in answers))
    return {
        "interval": INTERVAL,
        "criteria": criteria,
        "tags": tags,
        "n_judgments": len(answers),
        # answers with a point off a scale shortened after they were given: left out, and said
        "off_scale": likert.off_scale(criteria, (r for _, r, _, _, _ in answers)),
        "last_judgment_id": max((last for *_, last, _w in rows), default=0),
        "candidates": [
            {
                "candidate": name,
                "criteria": {key: {"n": s.n, "n_na": s.n_na, "mean": _finite(s.mean), "lower": _finite(s.lower),
                                   "upper": _finite(s.upper), "distribution": list(s.distribution)}
                             for key, s in per.items()},
                "tags": {key: {**asdict(r), "share": _finite(r.share), "lower": _finite(r.lower),
                               "upper": _finite(r.upper)} for key, r in rates.get(name, {}).items()},
            }
            for name, per in summaries.items()
        ],
    }


def metric_runs_table(study: Study, slice_key: str = "all") -> dict:
    """The study's metric runs, newest first, each with its candidates' scores on one slice."""
    from .models import CandidateScore, MetricRun

    runs = list(MetricRun.objects.filter(study=study).order_by("-created_at", "-pk"))
    slices = sorted(set(CandidateScore.objects.filter(run__study=study).values_list("slice_key", flat=True))
                    - {"all"})
    if slice_key != "all" and slice_key not in slices:
        slice_key = "all"
    scores: dict[int, list] = {}
    for s in (CandidateScore.objects.filter(run__study=study, slice_key=slice_key)
              .select_related("candidate").order_by("candidate__name")):
        scores.setdefault(s.run_id, []).append(s)
    for run in runs:
        run.scores = scores.get(run.pk, [])
        run.percent = round(100 * run.n_done / run.n_total) if run.n_total else 0
    active = any(r.status in (MetricRun.Status.QUEUED, MetricRun.Status.RUNNING) for r in runs)
    return {"runs": runs, "slices": ["all", *slices], "slice": slice_key, "active": active}
