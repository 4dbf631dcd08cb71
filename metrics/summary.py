"""The study summary for managers: human ratings, metrics, judge win rates, latency, tokens and
cost per candidate, which metric and judge to trust, and a recommendation within the budget.

Two halves, like the leaderboard:

* :func:`summary_recompute` runs in the aggregation worker: every refresh of the study's
  ratings (after votes, generation batches, finished metric runs and judge runs) requests it
  through :func:`arena.services.ratings_request`, at most once per
  ``EVALSITE_SUMMARY_MIN_INTERVAL`` seconds and always once after the last change.
  It reads what grows with the study (latencies of every output, every output score, every
  judge verdict, every Likert judgment) and stores plain JSON as the study's ``summary``
  snapshot.  It is skipped when nothing it reads has changed (:func:`summary_marker`).
* :func:`study_summary` serves a request: the snapshot, the budget, the recommendation and
  the sort.  Three queries whatever the study's size.

Latency percentiles are numpy's (linear interpolation); cost is per 1,000 outputs.

Which metric and judge to trust (:mod:`metrics.trust`), every correlation oriented so that a
positive value means "agrees with the humans" (a lower-is-better metric is negated first, as
``metrics.services.better`` says):

* system level, against the Bradley-Terry ratings: a per-output metric's candidate means (the
  interval resamples prompts); a corpus or set metric's one score per candidate (slice "all";
  no interval: no per-prompt scores to resample); a pairwise judge's win rates; and, against
  the human Likert mean per candidate on each criterion, a Likert judge's mean point;
* output level, against the human Likert mean of each output: per-output metric values, and
  a Likert judge's points (the figures of :func:`arena.judging.judge_summary`).

Each metric column is labelled from its run's options and configuration (model folder, layer,
reference set...), so two runs of one metric are told apart; the run's options and config
travel with it into the JSON and CSV exports.
"""
from __future__ import annotations

import math
from pathlib import PurePath

import numpy as np
from django.db.models import Avg, Count, Max
from django.utils import timezone

from annotation.models import Candidate, Judgment, Output, Study
from arena import modes
from arena.models import Judge, JudgeVerdict, RatingSnapshot
from arena.services import SUMMARY  # the snapshot's method and its refresh request's key

from . import services as metric_services
from . import trust
from .models import CandidateScore, MetricRun, OutputScore, SummaryBudget

TRUST_ROUNDS = 500
TRUST_SEED = 0


def _num(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if not math.isfinite(value) else value


def _result(res) -> dict:
    return {"value": _num(res.value), "lower": _num(res.lower), "upper": _num(res.upper), "n": res.n}


def _leaf(value) -> str:
    """A model path's folder (or file) name: what tells two models apart on a column header."""
    return PurePath(str(value)).name or str(value)


def metric_label(metric: str, options: dict, config: dict) -> str:
    """A column header for one run: the metric and what sets its run apart from another run of
    the same metric (its options, with a model path as its folder name and a reference set by
    name), plus the layer and premise the metric reported; e.g. ``bertscore (all-MiniLM-L6-v2,
    layer 6)``.  Runs are unique by metric and options, so this differs between them unless
    two model folders share a name (the caller then adds the run id)."""
    options, config = options or {}, config or {}
    parts: list[str] = []
    model = options.get("model") or (config.get("model") if "/" in str(config.get("model", "")) else None)
    if model:
        parts.append(_leaf(model))
    for key in sorted(options):
        value = options[key]
        if key == "model" or value in (None, ""):
            continue
        if key == "reference":
            parts.append(f"reference: {config.get('reference_set') or value}")
        else:
            parts.append(f"{key} {value}")
    if config.get("layer") is not None:
        parts.append(f"layer {config['layer']}")
    if config.get("idf"):
        parts.append("idf")
    if config.get("premise"):
        parts.append(f"premise: {config['premise']}")
    return f"{metric} ({', '.join(parts)})" if parts else metric


def _labels(runs: list) -> dict[int, str]:
    """Run id -> its column label, the run id added where two labels would still be equal."""
    labels = {r.pk: metric_label(r.metric, r.options, r.config) for r in runs}
    seen: dict[str, int] = {}
    for label in labels.values():
        seen[label] = seen.get(label, 0) + 1
    return {pk: (f"{label} [run {pk}]" if seen[label] > 1 else label) for pk, label in labels.items()}


def _interval_text(metric: str, config: dict) -> str:
    """How the run's candidate intervals were made, as the run's config says (a per-output
    metric: :data:`metrics.services.AGGREGATE`; a corpus or set metric: its own bootstrap)."""
    config = config or {}
    text = config.get("aggregate") or config.get("bootstrap") or config.get("interval")
    if text:
        return str(text)
    if metric in metric_services.CORPUS_METRICS or metric in metric_services.SET_METRICS:
        return ""
    return metric_services.AGGREGATE


def metric_config_json(metric: dict) -> str:
    """One metric column's label, run options and run config as JSON: the CSV export's
    ``<metric>_<run>_config`` cell (the JSON export carries the same keys in ``metrics``)."""
    import json

    return json.dumps({"label": metric.get("label", metric.get("name")), "options": metric.get("options", {}),
                       "config": metric.get("config", {})}, sort_keys=True, allow_nan=False)


# Why a metric's system-level row has no interval: it stores one score per candidate.
NO_INTERVAL = {
    "corpus": "no interval: corpus-level metric: no per-prompt scores to resample",
    "set": "no interval: set-level metric (one score per candidate's image set): no per-prompt scores to resample",
    "other": "no interval: the run stored no per-output scores to resample",
}


# --- the worker's half ------------------------------------------------------------------


def summary_marker(study_id: int) -> list:
    """What the summary was computed from, in a handful of aggregates: done outputs, finished
    metric runs, judge verdicts, judgments, candidates and the study's version and criteria.
    Equal markers mean an equal summary, so the worker skips the work."""
    study = Study.objects.only("version", "likert_criteria", "ratings_mode", "failure_tags").get(pk=study_id)
    outputs = Output.objects.filter(study_id=study_id, status=Output.Status.DONE).aggregate(
        n=Count("id"), last=Max("finished_at"))
    runs = MetricRun.objects.filter(study_id=study_id, status=MetricRun.Status.DONE).aggregate(
        n=Count("id"), last=Max("finished_at"))
    verdicts = JudgeVerdict.objects.filter(judge__study_id=study_id).aggregate(n=Count("id"), last=Max("id"))
    judgments = Judgment.objects.filter(study_id=study_id).aggregate(n=Count("id"), last=Max("id"))
    candidates = Candidate.objects.filter(study_id=study_id).aggregate(n=Count("id"), last=Max("id"))
    judges = Judge.objects.filter(study_id=study_id).aggregate(n=Count("id"), last=Max("finished_at"))

    def stamp(agg: dict) -> list:
        return [agg["n"], agg["last"].isoformat() if hasattr(agg["last"], "isoformat") else agg["last"]]

    # whose judgments the ratings count can change without a new judgment (flags, competence)
    counted = RatingSnapshot.objects.filter(study_id=study_id, slice_key="all", method="bt").values_list(
        "payload__ratings_mode", flat=True).first()
    return [study.version, study.ratings_mode, counted, [c.get("key") for c in study.likert_criteria or []],
            [t.get("key") for t in study.failure_tags or []], stamp(outputs), stamp(runs),
            stamp(verdicts), stamp(judgments), stamp(candidates), stamp(judges)]


def _human_output_means(study_id: int, criteria: list[dict], mode: dict | None = None) -> dict[str, dict[int, float]]:
    """Criterion key -> {output id: mean human Likert point}; excluded annotators, checks and
    'not applicable' left out (the leaderboard's own judgment set), and counted as the ratings
    snapshot's mode counted them (``mode``: its ``ratings_mode``): flagged annotators left out,
    or each point weighted by its annotator's competence (Σw·x / Σw; weight 1 when unrated)."""
    from arena.selectors import slice_judgments

    mode = mode if isinstance(mode, dict) else {}
    left_out = set(mode.get("left_out") or [])
    weights = {int(k): float(v) for k, v in (mode.get("weights") or {}).items()}
    sums: dict[str, dict[int, list[float]]] = {c["key"]: {} for c in criteria}  # output -> [Σw·x, Σw]
    for annotator_id, output_id, ratings in (slice_judgments(study_id).filter(ratings__isnull=False)
                                             .values_list("annotator_id", "unit__output_a_id", "ratings")):
        w = weights.get(annotator_id, 1.0)
        if annotator_id in left_out or w <= 0:
            continue
        for key, per in sums.items():
            point = (ratings or {}).get(key)
            if isinstance(point, (int, float)) and not isinstance(point, bool):
                acc = per.setdefault(output_id, [0.0, 0.0])
                acc[0] += w * float(point)
                acc[1] += w
    return {key: {o: sw / w for o, (sw, w) in per.items()} for key, per in sums.items()}


def _judge_system_rows(judge_ids: list[int]) -> dict[int, list[tuple[str, int, float]]]:
    """Judge id -> (candidate id, prompt id, score) twice per verdict (a win 1, a tie ½), so
    that a candidate's mean is its win rate over the judged pairs."""
    from arena import outcomes

    rows: dict[int, list] = {j: [] for j in judge_ids}
    for judge_id, outcome, prompt, lo, hi, a_is_lo in (
            JudgeVerdict.objects.filter(judge_id__in=judge_ids)
            .values_list("judge_id", "outcome", "unit__prompt_id", "unit__cand_lo_id", "unit__cand_hi_id",
                         "unit__a_is_lo")):
        score = outcomes.SCORE[outcomes.STORED_CODE[outcome]]
        a, b = (lo, hi) if a_is_lo else (hi, lo)
        rows[judge_id].append((a, prompt, score))
        rows[judge_id].append((b, prompt, 1.0 - score))
    return rows


def _likert_judge_rows(judge_ids: list[int]) -> dict[int, list[tuple[int, int, str, int]]]:
    """Judge id -> (candidate id, prompt id, criterion key, point) per scored output: the
    outputs :func:`arena.judging.judge_summary` counts (finished, gold prompts left out)."""
    from arena.models import JudgeScore

    rows: dict[int, list] = {j: [] for j in judge_ids}
    if not judge_ids:
        return rows
    for judge_id, cand, prompt, key, value in (
            JudgeScore.objects.filter(judge_id__in=judge_ids, value__isnull=False,
                                      output__status=Output.Status.DONE, output__prompt__is_gold=False)
            .values_list("judge_id", "output__candidate_id", "output__prompt_id", "criterion", "value")):
        rows[judge_id].append((cand, prompt, key, value))
    return rows


def _likert_judge_definition() -> str:
    from arena.judging import AGREEMENT_ROUNDS

    return (f"percentile, {AGREEMENT_ROUNDS} rounds over outputs, 95%; human side: the mean of the people's "
            "points on each output, each annotator counted once")


def summary_compute(study: Study) -> dict:
    """The summary as JSON-ready data (see the module docstring); everything but the budget."""
    from arena.judging import judge_summary

    snapshot = RatingSnapshot.objects.filter(study=study, slice_key="all", method="bt").first()
    board = snapshot.board if snapshot else None
    by_rating = {r.model: r for r in board.rows} if board else {}
    likert = board.likert if board else None
    criteria = [{"key": c["key"], "name": c["name"]} for c in likert.criteria] if likert else []
    likert_by = {c.candidate: c.criteria for c in likert.candidates} if likert else {}

    candidates = list(Candidate.objects.filter(study=study).order_by("name").values_list("pk", "name"))
    names = dict(candidates)
    done = Output.objects.filter(study=study, status=Output.Status.DONE)
    agg = {row["candidate_id"]: row for row in done.order_by().values("candidate_id").annotate(
        n=Count("id"), tokens=Avg("completion_tokens"), cost=Avg("cost"))}
    latencies: dict[int, list[float]] = {}
    for cid, ms in done.filter(latency_ms__isnull=False).values_list("candidate_id", "latency_ms"):
        latencies.setdefault(cid, []).append(ms)
    image_seconds = {row["candidate_id"]: row["ms"] / 1000.0 for row in
                     done.exclude(image="").filter(latency_ms__isnull=False).order_by().values("candidate_id")
                     .annotate(ms=Avg("latency_ms"))}
    from .failures import ANY, failure_figures

    failures = failure_figures(study)
    any_rate = {c["candidate"]: next(r for r in c["rates"] if r["tag"] == ANY) for c in failures["candidates"]}

    runs = list(MetricRun.objects.filter(study=study, status=MetricRun.Status.DONE).order_by("metric", "pk"))
    scores = {(s.run_id, s.candidate_id): s for s in
              CandidateScore.objects.filter(run__in=runs, slice_key="all")}
    labels = _labels(runs)
    metrics = [{"key": f"run{r.pk}", "name": r.metric, "run": r.pk, "label": labels[r.pk],
                "better": (r.config or {}).get("better", metric_services.better(r.metric)),
                "warning": (r.config or {}).get("warning", ""), "interval": _interval_text(r.metric, r.config),
                "options": r.options or {}, "config": r.config or {}} for r in runs]

    details = judge_summary(study, snapshot.payload.get("ratings_mode") if snapshot else None)
    judged = [j for j in details if j.get("kind", "pairwise") == "pairwise" and j["n_done"]]
    likert_judged = [j for j in details if j.get("kind") == "likert" and j["n_done"]]
    judges = [{"key": f"judge{j['id']}", "name": j["name"], "judge": j["id"]} for j in judged]
    win_rates = {(j["id"], w["candidate"]): w for j in judged for w in j["win_rates"]}

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
            "judges": [{"key": j["key"], **({"win_rate": _num(w["win_rate"]), "n": w["n"]}
                                            if (w := win_rates.get((j["judge"], name))) else
                                            {"win_rate": None, "n": 0})}
                       for j in judges],
            "latency_p50": _num(p50), "latency_p95": _num(p95),
            "tokens": _num(a.get("tokens")),
            "cost_per_1000": None if a.get("cost") is None else float(a["cost"]) * 1000,
            "failure_rate": _num(f["share"]) if (f := any_rate.get(name)) else None,
            "failure_lower": _num(f["lower"]) if f else None, "failure_upper": _num(f["upper"]) if f else None,
            "failure_n": f["of"] if f else 0,
            "seconds_per_image": _num(image_seconds.get(cid)),
        })

    # Which metric and judge to trust: system level against the ratings, output level against
    # the mean Likert point of each output.
    ratings = {r.model: r.rating for r in board.rows} if board else {}
    per_output: dict[int, dict[int, float]] = {}
    by_run: dict[int, list] = {}
    for run_id, output_id, cand, prompt, value in (
            OutputScore.objects.filter(run__in=runs, value__isnull=False)
            .values_list("run_id", "output_id", "output__candidate_id", "output__prompt_id", "value")):
        by_run.setdefault(run_id, []).append((names.get(cand, str(cand)), prompt, value))
        per_output.setdefault(run_id, {})[output_id] = value
    agreement = []
    for m in metrics:
        kind = ("corpus" if m["name"] in metric_services.CORPUS_METRICS else
                "set" if m["name"] in metric_services.SET_METRICS else None)
        if kind is None and m["run"] not in by_run and any(r == m["run"] for r, _ in scores):
            kind = "other"  # a run with candidate scores but no per-output ones
        if kind is None:
            res = trust.system_agreement(by_run.get(m["run"], []), ratings, np.random.default_rng(TRUST_SEED),
                                         rounds=TRUST_ROUNDS, better=m["better"])
            definition = res["kendall_tau"].config["bootstrap"]
        else:
            values = {names.get(cid, str(cid)): s.value for (run_id, cid), s in scores.items() if run_id == m["run"]}
            res = trust.candidate_agreement(values, ratings, NO_INTERVAL[kind], better=m["better"])
            definition = NO_INTERVAL[kind]
        agreement.append({"kind": "metric", "metric": m["name"], "label": m["label"], "run": m["run"],
                          "better": m["better"], "against": "ratings", "criterion": None,
                          **{k: _result(v) for k, v in res.items()}, "definition": definition,
                          "orientation": res["kendall_tau"].config["orientation"]})
    judge_rows = _judge_system_rows([j["judge"] for j in judges])
    for j in judges:
        rows_j = [(names.get(c, str(c)), p, v) for c, p, v in judge_rows.get(j["judge"], [])]
        res = trust.system_agreement(rows_j, ratings, np.random.default_rng(TRUST_SEED), rounds=TRUST_ROUNDS)
        agreement.append({"kind": "judge", "metric": f"judge: {j['name']}", "label": f"judge: {j['name']}",
                          "judge": j["judge"], "better": "higher", "against": "ratings", "criterion": None,
                          **{k: _result(v) for k, v in res.items()}, "definition": res["kendall_tau"].config["bootstrap"],
                          "orientation": res["kendall_tau"].config["orientation"]})
    # Likert judges: the judge's mean point per candidate against the human Likert mean per
    # candidate (the board's, counted as the ratings mode says), per criterion.
    points = _likert_judge_rows([j["id"] for j in likert_judged])
    for j in likert_judged:
        for c in criteria:
            human_means = {name: cells[c["key"]].mean for name, cells in likert_by.items()
                           if c["key"] in cells and cells[c["key"]].mean is not None}
            rows_j = [(names.get(cand, str(cand)), p, v) for cand, p, key, v in points.get(j["id"], [])
                      if key == c["key"]]
            res = trust.system_agreement(rows_j, human_means, np.random.default_rng(TRUST_SEED), rounds=TRUST_ROUNDS,
                                         human=f"likert mean per candidate: {c['key']}")
            agreement.append({"kind": "likert_judge", "metric": f"judge: {j['name']}",
                              "label": f"judge: {j['name']} · {c['name']}", "judge": j["id"], "better": "higher",
                              "against": "likert", "criterion": c["name"],
                              **{k: _result(v) for k, v in res.items()},
                              "definition": res["kendall_tau"].config["bootstrap"],
                              "orientation": res["kendall_tau"].config["orientation"]})

    humans = (_human_output_means(study.pk, criteria, snapshot.payload.get("ratings_mode") if snapshot else None)
              if criteria and runs else {})
    output_agreement = []
    for m in metrics:
        values = per_output.get(m["run"], {})
        for c in criteria:
            human = humans.get(c["key"], {})
            shared = sorted(set(values) & set(human))
            if len(shared) < 2:
                continue
            res = trust.output_agreement([values[o] for o in shared], [human[o] for o in shared],
                                         np.random.default_rng(TRUST_SEED), rounds=TRUST_ROUNDS, criterion=c["key"],
                                         better=m["better"])
            output_agreement.append({"kind": "metric", "metric": m["name"], "label": m["label"], "run": m["run"],
                                     "criterion": c["name"], "better": m["better"],
                                     **{k: _result(v) for k, v in res.items()},
                                     "definition": res["kendall_tau"].config["bootstrap"],
                                     "orientation": res["kendall_tau"].config["orientation"]})
    # Likert judges at output level: computed once, by judge_summary (its seeded bootstrap).
    for j in likert_judged:
        for c in j.get("criteria") or []:
            tau, rho = c.get("kendall_tau") or {}, c.get("spearman_rho") or {}
            if not tau.get("n"):
                continue
            output_agreement.append({"kind": "likert_judge", "metric": f"judge: {j['name']}",
                                     "label": f"judge: {j['name']}", "judge": j["id"], "criterion": c["name"],
                                     "better": "higher", "kendall_tau": tau, "spearman_rho": rho,
                                     "definition": _likert_judge_definition(),
                                     "orientation": trust.orientation("higher")})

    return {
        "ratings_computed_at": snapshot.computed_at.isoformat() if snapshot else None,
        "ratings_mode": modes.sentence(snapshot.payload) if snapshot else None,
        "has_ratings": bool(by_rating), "criteria": criteria, "metrics": metrics, "judges": judges, "rows": rows,
        "agreement": agreement, "output_agreement": output_agreement,
        "judge_details": details, "failures": failures,
    }


def _clean(obj):
    """JSON-safe: non-finite floats become None (PostgreSQL's jsonb has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def summary_recompute(*, study_id: int, force: bool = False) -> RatingSnapshot:
    """Compute and store the study's summary snapshot (the worker's side); skipped, apart from
    moving ``computed_at``, when :func:`summary_marker` equals the stored one, unless ``force``."""
    study = Study.objects.get(pk=study_id)
    marker = summary_marker(study_id)
    now = timezone.now()
    current = RatingSnapshot.objects.filter(study_id=study_id, slice_key="all", method=SUMMARY).first()
    if current is not None and not force and current.payload.get("marker") == marker:
        RatingSnapshot.objects.filter(pk=current.pk).update(computed_at=now)
        current.computed_at = now
        return current
    payload = _clean({**summary_compute(study), "marker": marker, "computed_at": now.isoformat()})
    snapshot, _ = RatingSnapshot.objects.update_or_create(
        study_id=study_id, slice_key="all", method=SUMMARY,
        defaults={"payload": payload, "study_version": study.version, "computed_at": now},
    )
    return snapshot


# --- the request's half -----------------------------------------------------------------


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


EMPTY = {"ratings_computed_at": None, "ratings_mode": None, "has_ratings": False, "criteria": [], "metrics": [], "judges": [], "rows": [],
         "agreement": [], "output_agreement": [], "judge_details": [], "failures": None}


def stored_summary(study: Study) -> tuple[RatingSnapshot | None, dict]:
    """The worker's stored summary (one query) and its payload, or :data:`EMPTY` before the first."""
    snapshot = RatingSnapshot.objects.filter(study=study, slice_key="all", method=SUMMARY).first()
    return snapshot, ({**EMPTY, **snapshot.payload} if snapshot else dict(EMPTY))


def study_summary(study: Study, sort: str = "") -> dict:
    """What a request shows: the stored summary, the budget, the recommendation within it and
    the rows in the asked order.  Two queries (snapshot and budget)."""
    snapshot, data = stored_summary(study)
    budget = SummaryBudget.objects.filter(study=study).first()
    max_cost = budget.max_cost_per_1000 if budget else None
    max_p95 = budget.max_latency_p95_ms if budget else None
    rows = data["rows"]
    return {
        **data, "snapshot": snapshot, "rows": sort_rows(rows, sort), "sort": sort,
        "budget": {"max_cost_per_1000": max_cost, "max_latency_p95_ms": max_p95},
        "recommendation": recommend(rows, max_cost, max_p95),
        "metric_aggregate": metric_services.AGGREGATE,  # how per-output metrics' intervals are made
    }


def sort_key_value(row: dict, key: str):
    if key in ("candidate", "rating", "latency_p50", "latency_p95", "tokens", "cost_per_1000", "outputs",
               "failure_rate", "seconds_per_image"):
        return row[key]
    kind, _, name = key.partition(":")
    for cell in row.get({"likert": "likert", "metric": "metrics", "judge": "judges"}.get(kind, ""), []):
        if cell["key"] == name:
            return cell.get("mean", cell.get("value", cell.get("win_rate")))
    return None


def sort_rows(rows: list[dict], sort: str) -> list[dict]:
    """Rows by ``sort`` (a column key, ``-`` first for descending; ``likert:<key>``,
    ``metric:<key>`` or ``judge:<key>`` for those columns); blanks last either way.  Default:
    best rating first."""
    sort = sort or "-rating"
    desc, key = sort.startswith("-"), sort.lstrip("-")
    known = [r for r in rows if sort_key_value(r, key) is not None]
    blank = [r for r in rows if sort_key_value(r, key) is None]
    return sorted(known, key=lambda r: sort_key_value(r, key), reverse=desc) + blank
