"""Reads for the metrics dashboards: turn judgments into the plain inputs of the math modules."""
from __future__ import annotations

from dataclasses import asdict

from annotation.models import Judgment, Study, StudyMember

from . import likert


def _finite(value: float) -> float | None:
    return None if value != value else round(value, 4)  # NaN -> None (JSON has no NaN)


def likert_summary(study: Study) -> dict:
    """Likert criteria per candidate and tag rates per candidate, as JSON-ready data.

    Excluded annotators' judgments are left out, as on the leaderboard.  Tag rates are
    over rated outputs (Likert judgments), the only judgments a tag can be pinned on one
    candidate by.  Reads the study's Likert judgments (one indexed scan).
    """
    excluded = StudyMember.objects.filter(study=study, excluded=True).values("user")
    rows = list(
        Judgment.objects.filter(study=study, ratings__isnull=False).exclude(annotator__in=excluded)
        .values_list("unit__output_a__candidate__name", "ratings", "tags")
    )
    criteria = study.likert_criteria
    tag_keys = [t["key"] for t in study.failure_tags]
    summaries = likert.summarize(criteria, ((c, r) for c, r, _ in rows))
    rates = likert.tag_rates(tag_keys, ((c, t or []) for c, _, t in rows))
    return {
        "interval": "Student t, 95%",
        "criteria": [{"key": c["key"], "name": c["name"], "scale": c["scale"], "labels": c["labels"]}
                     for c in criteria],
        "tags": [{"key": t["key"], "label": t["label"]} for t in study.failure_tags],
        "n_judgments": len(rows),
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
