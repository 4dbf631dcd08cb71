"""Failure analysis: the failure tags raters pinned on outputs (Likert judgments' ``tags``).

:func:`failure_figures` runs in the aggregation worker, inside the study's summary snapshot
(:func:`metrics.summary.summary_compute`): the prompt intent × failure tag matrix (the prompt's
tags against the failure tags, counts and rates over rated outputs) and each candidate's rate
per failure tag and for "any failure", with Wilson 95% intervals (:func:`metrics.likert.tag_rates`).
A rated output here is one Likert judgment (an output rated twice counts twice), as in the
leaderboard's tag rates.  :func:`failure_gallery` serves a page of failing outputs (24 per page).
"""
from __future__ import annotations

from dataclasses import asdict

from django.core.paginator import Paginator
from django.db.models import Count

from annotation.models import Output, PromptTag, Study

from . import likert

ANY = "any"
PAGE_SIZE = 24


def _num(value):
    return None if value is None or value != value else float(value)


def failure_figures(study: Study) -> dict:
    """The matrix and the per-candidate rates, JSON-ready (one GROUP BY over the Likert judgments)."""
    from arena.selectors import slice_judgments

    tags = [{"key": t["key"], "label": t["label"]} for t in study.failure_tags or []]
    keys = [t["key"] for t in tags]
    grouped = (slice_judgments(study.pk).filter(ratings__isnull=False).order_by()
               .values_list("unit__output_a__candidate__name", "unit__prompt_id", "tags", "unit__output_a_id")
               .annotate(n=Count("id")))
    answers = [(c, p, [t for t in (tg or []) if t in keys], o) for c, p, tg, o, n in grouped for _ in range(n)]
    intents: dict[int, list[str]] = {}
    for prompt_id, tag in PromptTag.objects.filter(study=study).values_list("prompt_id", "tag"):
        intents.setdefault(prompt_id, []).append(tag)
    # an output rated several times is one cluster of the rate's interval (see metrics.likert)
    rates = likert.tag_rates([*keys, ANY], ((c, [*t, ANY] if t else [], o) for c, _, t, o in answers))
    rows_by: dict[str, dict] = {}
    for c, p, t, _o in answers:
        for intent in ["(all prompts)", *sorted(intents.get(p, []) or ["(untagged)"])]:
            row = rows_by.setdefault(intent, {"intent": intent, "n": 0, "counts": dict.fromkeys([*keys, ANY], 0)})
            row["n"] += 1
            for k in [*set(t), ANY] if t else []:
                row["counts"][k] += 1
    matrix = []
    for intent in sorted(rows_by, key=lambda s: (s != "(all prompts)", s)):
        row = rows_by[intent]
        matrix.append({"intent": intent, "n": row["n"],
                       "cells": [{"tag": k, "count": row["counts"][k],
                                  "rate": row["counts"][k] / row["n"] if row["n"] else None} for k in [*keys, ANY]]})
    return {
        "tags": tags, "n_rated": len(answers),
        "matrix": matrix,
        "candidates": [{"candidate": cand, "rates": [{"tag": k, **{f: _num(v) if isinstance(v, float) else v
                                                                   for f, v in asdict(per[k]).items()}}
                                                     for k in [*keys, ANY]]}
                       for cand, per in rates.items()],
        "definition": ("share of rated outputs (Likert judgments) with the tag; Wilson 95% interval on the "
                       "effective n (an output rated several times counts as one cluster: n / design effect)"),
    }


def failure_gallery(study: Study, *, tag: str = "", candidate: str = "", page: int = 1):
    """A page of outputs some rater tagged with a failure (``tag``: that one), newest first."""
    from arena.selectors import slice_judgments

    keys = {t["key"] for t in study.failure_tags or []}
    judged = slice_judgments(study.pk).filter(ratings__isnull=False).exclude(tags__isnull=True)
    if tag in keys:
        judged = judged.filter(tags__icontains=f'"{tag}"')
    else:
        judged = judged.exclude(tags=[])
        tag = ""
    qs = Output.objects.filter(study=study, pk__in=judged.values("unit__output_a_id"))
    if candidate:
        qs = qs.filter(candidate__name=candidate)
    qs = qs.select_related("candidate", "prompt").order_by("-pk")
    return Paginator(qs, PAGE_SIZE).get_page(page), tag
