"""The study summary for managers: human ratings, metrics, latency, tokens and cost per candidate,
and a recommendation within the evaluator's budget.

Queries: a fixed number whatever the number of judgments or outputs (the latest snapshot,
candidates, one GROUP BY over outputs, finished runs and their candidate scores, the budget,
one narrow ``values_list`` of latencies and one of output scores).  Latency percentiles are
computed in Python (numpy, linear interpolation) over that one list of latencies: fine for
now, a database percentile would replace it for very large studies.
"""
from __future__ import annotations

import math

import numpy as np
from django.db.models import Avg, Count

from annotation.models import Candidate, Output, Study
from arena.models import RatingSnapshot

from . import trust
from .models import CandidateScore, MetricRun, OutputScore, SummaryBudget

TRUST_ROUNDS = 500
TRUST_SEED = 0


def _num(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def recommend(rows: list[dict], max_cost: float | None, max_p95: float | None) -> dict:
    """The best-rated candidate whose cost per 1,000 outputs and p95 latency fit the budget,
    and whether its rating interval overlaps the runner-up's (plain words in ``sentence``).

    A candidate with no cost (or latency) figure passes a cost (or latency) limit only when
    no limit is set: an unknown cost cannot be shown to fit."""
    def fits(row: dict) -> bool:
        if max_cost is not None and (row["cost_per_1000"] is None or row["cost_per_1000"] > max_cost):
            return False
        return not (max_p95 is not None and (row["latency_p95"] is None or row["latency_p95"] > max_p95))

    rated = sorted((r for r in rows if r["rating"] is not None and fits(r)), key=lambda r: -r["rating"])
    if not rated:
        return {"candidate": None, "runner_up": None, "separable": None,
                "sentence": "No rated candidate fits the budget." if any(r["rating"] is not None for r in rows)
                else "No ratings yet: nothing to recommend."}
    best = rated[0]
    if len(rated) == 1:
        return {"candidate": best["candidate"], "runner_up": None, "separable": None,
                "sentence": f"{best['candidate']} is the only rated candidate within the budget."}
    second = rated[1]
    separable = best["rating_lower"] > second["rating_upper"]
    how = (f"clearly ahead of {second['candidate']}: their rating intervals do not overlap" if separable
           else f"not separable from {second['candidate']}: their rating intervals overlap")
    return {"candidate": best["candidate"], "runner_up": second["candidate"], "separable": separable,
            "sentence": f"{best['candidate']} has the best human rating within the budget, {how}."}


def study_summary(study: Study, sort: str = "") -> dict:
    """Rows per candidate, the metric and Likert columns, the recommendation and each metric's
    system-level agreement with the human ratings."""
    snapshot = RatingSnapshot.objects.filter(study=study, slice_key="all", method="bt").first()
    board = snapshot.board if snapshot else None
    by_rating = {r.model: r for r in board.rows} if board else {}
    likert = board.likert if board else None
    criteria = [{"key": c["key"], "name": c["name"]} for c in likert.criteria] if likert else []
    likert_by = {c.candidate: c.criteria for c in likert.candidates} if likert else {}

    candidates = list(Candidate.objects.filter(study=study).order_by("name").values_list("pk", "name"))
    done = Output.objects.filter(study=study, status=Output.Status.DONE)
    agg = {row["candidate_id"]: row for row in done.order_by().values("candidate_id").annotate(
        n=Count("id"), tokens=Avg("completion_tokens"), cost=Avg("cost"))}
    latencies: dict[int, list[float]] = {}
    for cid, ms in done.filter(latency_ms__isnull=False).values_list("candidate_id", "latency_ms"):
        latencies.setdefault(cid, []).append(ms)

    runs = list(MetricRun.objects.filter(study=study, status=MetricRun.Status.DONE).order_by("metric", "pk"))
    scores = {(s.run_id, s.candidate_id): s for s in
              CandidateScore.objects.filter(run__in=runs, slice_key="all")}
    metrics = [{"key": f"run{r.pk}", "name": r.metric, "run": r.pk} for r in runs]

    rows = []
    for cid, name in candidates:
        a, lat, br = agg.get(cid, {}), latencies.get(cid), by_rating.get(name)
        p50, p95 = (np.percentile(lat, [50, 95]) if lat else (None, None))
        cells = likert_by.get(name, {})
        rows.append({
            "candidate": name, "outputs": a.get("n", 0),
            "rating": br.rating if br else None, "rating_lower": br.lower if br else None,
            "rating_upper": br.upper if br else None,
            "likert": [{"key": c["key"], **({"mean": cells[c["key"]].mean, "lower": cells[c["key"]].lower,
                                             "upper": cells[c["key"]].upper, "n": cells[c["key"]].n}
                                            if c["key"] in cells else {"mean": None, "lower": None, "upper": None,
                                                                       "n": 0})}
                       for c in criteria],
            "metrics": [{"key": m["key"], **({"value": _num(s.value), "lower": _num(s.lower), "upper": _num(s.upper),
                                             "n": s.n} if (s := scores.get((m["run"], cid))) else
                                            {"value": None, "lower": None, "upper": None, "n": 0})}
                        for m in metrics],
            "latency_p50": _num(p50), "latency_p95": _num(p95),
            "tokens": _num(a.get("tokens")),
            "cost_per_1000": None if a.get("cost") is None else float(a["cost"]) * 1000,
        })

    budget = SummaryBudget.objects.filter(study=study).first()
    max_cost = budget.max_cost_per_1000 if budget else None
    max_p95 = budget.max_latency_p95_ms if budget else None

    ratings = {r.model: r.rating for r in board.rows} if board else {}
    by_run: dict[int, list] = {}
    for run_id, cand, prompt, value in (OutputScore.objects.filter(run__in=runs, value__isnull=False)
                                        .values_list("run_id", "output__candidate__name", "output__prompt_id",
                                                     "value")):
        by_run.setdefault(run_id, []).append((cand, prompt, value))
    agreement = []
    for m in metrics:
        res = trust.system_agreement(by_run.get(m["run"], []), ratings, np.random.default_rng(TRUST_SEED),
                                     rounds=TRUST_ROUNDS)
        agreement.append({"metric": m["name"], "run": m["run"],
                          **{k: {"value": _num(v.value), "lower": _num(v.lower), "upper": _num(v.upper), "n": v.n}
                             for k, v in res.items()},
                          "definition": res["kendall_tau"].config["bootstrap"]})

    return {
        "snapshot": snapshot, "has_ratings": bool(by_rating), "criteria": criteria, "metrics": metrics,
        "rows": sort_rows(rows, sort), "sort": sort,
        "budget": {"max_cost_per_1000": max_cost, "max_latency_p95_ms": max_p95},
        "recommendation": recommend(rows, max_cost, max_p95), "agreement": agreement,
    }


def sort_key_value(row: dict, key: str):
    if key in ("candidate", "rating", "latency_p50", "latency_p95", "tokens", "cost_per_1000", "outputs"):
        return row[key]
    kind, _, name = key.partition(":")
    for cell in row.get({"likert": "likert", "metric": "metrics"}.get(kind, ""), []):
        if cell["key"] == name:
            return cell.get("mean", cell.get("value"))
    return None


def sort_rows(rows: list[dict], sort: str) -> list[dict]:
    """Rows by ``sort`` (a column key, ``-`` first for descending; ``likert:<key>``/``metric:<key>``
    for those columns); blanks last either way.  Default: best rating first."""
    sort = sort or "-rating"
    desc, key = sort.startswith("-"), sort.lstrip("-")
    known = [r for r in rows if sort_key_value(r, key) is not None]
    blank = [r for r in rows if sort_key_value(r, key) is None]
    return sorted(known, key=lambda r: sort_key_value(r, key), reverse=desc) + blank
