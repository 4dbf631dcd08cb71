"""The agreement snapshot of a study: computed by the aggregation worker, read by the agreement page.

:func:`agreement_recompute` turns the study's judgments (those of :func:`arena.selectors.slice_judgments`:
excluded annotators and answers to checks left out) into plain triples for :mod:`metrics.agreement`
and stores the result as the ``agreement`` :class:`arena.models.RatingSnapshot`, like the quality
table (:func:`arena.services.quality_recompute`): redone only when the judgments (count, newest
id), the study's version or its settings moved.  :func:`agreement_page` shapes the stored payload
for the page without reading a judgment.

What is measured, per "criterion":

* ``choice``: the pairwise answer, nominal with the four stored outcomes a/b/tie/both_bad.  The
  outcome is stored relative to the unit's output_a/output_b, so which output was shown on which
  side of the screen does not split agreeing annotators.
* every Likert criterion of the study, at its ``level`` (ordinal unless the evaluator set
  another in the criterion's settings); "not applicable" answers are missing values.
* every failure tag, nominal present (1) / absent (0) among the annotators who rated the output.
"""
from __future__ import annotations

import math
import statistics
from collections import Counter

import numpy as np
from django.db.models import Count, Max
from django.utils import timezone

ALL = "all"
AGREEMENT = "agreement"
ROUNDS = 1000  # bootstrap rounds of each alpha interval
LEAST_AGREED = 20  # pairwise units listed as the least agreed
MIN_SHARED = 2  # a kappa needs two annotators with this many units in common
# Flags of the annotator table (documented on the page):
MIN_COMPETENCE = 0.5  # Dawid-Skene skill (probability of a right label) below this: "low competence"
MAX_SPAMMING = 0.5  # MACE spamming probability above this (competence below 1 - this): "MACE spammer"
ALPHA_GAIN = 0.1  # alpha of everyone else higher by this much without the annotator: "alpha improves"
RELIABLE, TENTATIVE = 0.8, 0.667  # Krippendorff's (2004) rule of thumb for alpha

CHOICE = "choice"
_CHOICE_WORDS = {"a": "A better", "b": "B better", "tie": "tie", "both_bad": "both bad"}


def thresholds() -> dict:
    return {"min_competence": MIN_COMPETENCE, "max_spamming": MAX_SPAMMING, "alpha_gain": ALPHA_GAIN,
            "reliable": RELIABLE, "tentative": TENTATIVE, "rounds": ROUNDS, "min_shared": MIN_SHARED}


def verdict(alpha: float | None) -> str:
    """Krippendorff's rule of thumb: reliable from 0.8, tentative conclusions from 0.667, else not."""
    if alpha is None:
        return "undefined"
    return "reliable" if alpha >= RELIABLE else "tentative" if alpha >= TENTATIVE else "not reliable"


def _num(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return round(value, 6) if math.isfinite(value) else None


def agreement_marker(study_id: int) -> tuple[int, int]:
    """(count, newest id) of every judgment of the study, checks included (they move gold accuracy)."""
    from annotation.models import Judgment

    row = Judgment.objects.filter(study_id=study_id).aggregate(n=Count("id"), last=Max("id"))
    return row["n"], row["last"] or 0


def _config(study) -> dict:
    return {"criteria": [[c["key"], c.get("level", "ordinal"), c["scale"]] for c in study.likert_criteria or ()],
            "tags": [t["key"] for t in study.failure_tags or ()], "gold_pass": study.gold_pass,
            "thresholds": thresholds()}


def agreement_recompute(*, study_id: int, force: bool = False):
    """Compute the study's agreement figures and store them as its ``agreement`` snapshot.

    Skipped (only ``computed_at`` moves) when the judgments, the study's version and its
    settings are those the snapshot was computed from, unless ``force``.
    """
    from annotation.models import Study
    from arena.models import RatingSnapshot

    study = Study.objects.only("version", "likert_criteria", "failure_tags", "gold_pass").get(pk=study_id)
    current = RatingSnapshot.objects.filter(study_id=study_id, slice_key=ALL, method=AGREEMENT).first()
    n, last = agreement_marker(study_id)
    config = _config(study)
    now = timezone.now()
    if (current is not None and not force and current.study_version == study.version
            and (current.n_judgments, current.last_judgment_id) == (n, last)
            and current.payload.get("config") == config):
        RatingSnapshot.objects.filter(pk=current.pk).update(computed_at=now)
        current.computed_at = now
        return current
    payload = {"computed_at": now.isoformat(), "config": config, **agreement_payload(study)}
    snapshot, _ = RatingSnapshot.objects.update_or_create(
        study_id=study_id, slice_key=ALL, method=AGREEMENT,
        defaults={"payload": payload, "n_judgments": n, "last_judgment_id": last, "study_version": study.version,
                  "computed_at": now},
    )
    return snapshot


def _load(study) -> list[tuple]:
    from arena.selectors import slice_judgments

    return list(slice_judgments(study.pk).order_by("pk").values_list(
        "pk", "annotator_id", "annotator__username", "unit_id", "unit__kind", "outcome", "ratings", "tags",
        "rationale", "served_at", "submitted_at"))


def _criteria_triples(study, rows) -> list[dict]:
    """The criteria measured, each with its triples (annotator id, unit id, value)."""
    out = [{"key": CHOICE, "name": "Pairwise choice", "kind": "pairwise", "level": "nominal", "labels": None,
            "triples": [(r[1], r[3], r[5]) for r in rows if r[5]]}]
    likert = [r for r in rows if r[4] == "likert"]
    for c in study.likert_criteria or ():
        triples = [(r[1], r[3], r[6][c["key"]]) for r in likert
                   if isinstance(r[6], dict) and r[6].get(c["key"]) is not None]
        out.append({"key": c["key"], "name": c["name"], "kind": "likert", "level": c.get("level", "ordinal"),
                    "labels": list(range(1, int(c["scale"]) + 1)), "triples": triples})
    for t in study.failure_tags or ():
        triples = [(r[1], r[3], int(t["key"] in (r[7] or ()))) for r in likert]
        out.append({"key": "tag:" + t["key"], "name": f"Tag “{t['label']}”", "kind": "tag", "level": "nominal",
                    "labels": [0, 1], "triples": triples})
    return out


def _measure(study_id: int, c: dict) -> dict:
    from . import agreement

    triples = c["triples"]
    row = {k: c[k] for k in ("key", "name", "kind", "level")}
    row.update(alpha=None, lower=None, upper=None, units=0, annotators=0, pairable=0, percent_agreement=None,
               fleiss=None, kappas=[], note="")
    if not triples:
        row.update(verdict=verdict(None), note="no answers yet")
        return row
    try:
        res = agreement.alpha_interval(triples, c["level"], np.random.default_rng(study_id), rounds=ROUNDS)
    except ValueError as exc:
        row.update(verdict=verdict(None), note=str(exc))
        return row
    row.update(alpha=_num(res.alpha), lower=_num(res.lower), upper=_num(res.upper), units=res.units,
               annotators=res.annotators, pairable=res.pairable, percent_agreement=_num(res.percent_agreement))
    row["verdict"] = verdict(row["alpha"])
    weights = None if c["level"] == "nominal" else "quadratic"
    row["kappa_weights"] = weights
    row["kappas"] = [{"a": k.a, "b": k.b, "n": k.n, "kappa": _num(k.kappa), "percent": _num(k.percent)}
                     for k in agreement.pairwise_kappas(triples, weights=weights, labels=c["labels"],
                                                        min_shared=MIN_SHARED)]
    fleiss = agreement.fleiss_kappa(triples)
    if fleiss is not None:
        row["fleiss"] = {"kappa": _num(fleiss.kappa), "percent": _num(fleiss.percent), "units": fleiss.units,
                         "raters_per_unit": fleiss.raters_per_unit}
    return row


def _competence(study_id: int, triples) -> tuple[dict, dict, str]:
    """Dawid-Skene and MACE on the pairwise choice; ``{}`` and a note when crowd-kit is missing."""
    from . import agreement

    if not triples:
        return {}, {}, "no pairwise judgments"
    out = {}
    try:
        for method in ("dawid_skene", "mace"):
            out[method] = agreement.competence(triples, method=method, seed=study_id)
    except ImportError:
        return {}, {}, "crowd-kit is not installed where the worker runs: competence not computed"
    except ValueError as exc:
        return {}, {}, f"competence not computed: {exc}"
    return out.get("dawid_skene"), out.get("mace"), ""


def _vote_entropy(triples) -> dict:
    votes: dict = {}
    for _, unit, value in triples:
        votes.setdefault(unit, Counter())[value] += 1
    out = {}
    for unit, counter in votes.items():
        total = sum(counter.values())
        out[unit] = -sum(n / total * math.log(n / total) for n in counter.values())
    return out


def agreement_payload(study) -> dict:
    """The snapshot's figures (plain JSON, no NaN): criteria, annotators, least-agreed units."""
    from arena.models import RatingSnapshot
    from arena.services import QUALITY, quality_recompute

    from . import agreement, gold

    rows = _load(study)
    criteria = _criteria_triples(study, rows)
    measured = [_measure(study.pk, c) for c in criteria]
    titles = {c["key"]: c["name"] if c["kind"] != "pairwise" else "the pairwise choice" for c in criteria}
    choice = criteria[0]["triples"]
    if measured[0]["units"]:
        ds, mace, note = _competence(study.pk, choice)
    else:  # without a unit judged twice there is no redundancy to learn from (and crowd-kit takes seconds)
        ds, mace, note = {}, {}, "competence needs pairwise units with two judgments or more"

    # per annotator
    loo: dict[int, dict[str, list]] = {}
    for c in criteria:
        if c["kind"] == "tag" or len({t[0] for t in c["triples"]}) < 3:
            continue  # without one of two annotators there is nobody to agree with
        try:
            for annotator, (with_, without) in agreement.leave_one_out(c["triples"], c["level"]).items():
                loo.setdefault(annotator, {})[c["key"]] = [_num(with_), _num(without)]
        except ValueError:
            continue
    quality = RatingSnapshot.objects.filter(study_id=study.pk, slice_key=ALL, method=QUALITY).first()
    if quality is None:
        quality = quality_recompute(study_id=study.pk)
    stats = quality.payload.get("annotators", {})
    names, counts, seconds = {}, Counter(), {}
    for r in rows:
        names[r[1]] = r[2]
        counts[r[1]] += 1
        if r[9] is not None and r[10] is not None:
            seconds.setdefault(r[1], []).append((r[10] - r[9]).total_seconds())
    annotators = []
    for user_id in sorted(names, key=lambda u: names[u]):
        q = stats.get(str(user_id)) or {}
        right, answered = q.get("gold_right", 0), q.get("gold_answered", 0)
        share = gold.accuracy(right, answered) if answered else None
        median = q.get("median_seconds")
        if median is None and seconds.get(user_id):  # a Likert-only annotator: the same server-clock time
            median = statistics.median(seconds[user_id])
        own = loo.get(user_id, {})
        gains = [w[1] - w[0] for key, w in own.items() if key != CHOICE and None not in w]
        row = {"user_id": user_id, "username": names[user_id], "judgments": counts[user_id],
               "loo": own, "choice_alpha": own.get(CHOICE, [None, None]),
               "likert_gain": _num(sum(gains) / len(gains)) if gains else None,
               "gold_right": right, "gold_answered": answered,
               "gold_accuracy": _num(share.share) if share else None,
               "gold_below": bool(share and gold.below_pass(right, answered, study.gold_pass / 100)),
               "competence": _num(ds.skills.get(user_id)) if ds else None,
               "mace": _num(mace.skills.get(user_id)) if mace else None,
               "median_seconds": _num(median)}
        flags = []
        if row["competence"] is not None and row["competence"] < MIN_COMPETENCE:
            flags.append(f"Low competence: Dawid-Skene skill {row['competence']:.2f} (below {MIN_COMPETENCE}).")
        if row["mace"] is not None and 1 - row["mace"] > MAX_SPAMMING:
            flags.append(f"MACE spammer: spamming probability {1 - row['mace']:.2f} (above {MAX_SPAMMING}).")
        for key, (with_, without) in own.items():
            if with_ is not None and without is not None and without - with_ >= ALPHA_GAIN:
                flags.append(f"Alpha improves without them on {titles[key]}: {with_:.2f} → {without:.2f}.")
        if row["gold_below"]:
            flags.append(f"Failing gold: {right}/{answered} right (pass mark {study.gold_pass}%).")
        row["flags"] = flags
        annotators.append(row)

    # least-agreed pairwise units, judgments side by side
    if ds:
        uncertain = agreement.most_uncertain(ds, k=LEAST_AGREED)
        source = "Dawid-Skene posterior entropy"
    else:
        entropy = _vote_entropy(choice)
        uncertain = sorted(entropy.items(), key=lambda kv: (-kv[1], kv[0]))[:LEAST_AGREED]
        source = "entropy of the votes"
    least = _least_agreed(study.pk, uncertain, rows, ds)
    return {"criteria": measured, "annotators": annotators, "competence_note": note, "least_agreed": least,
            "least_agreed_by": source, "n_judgments": len(rows)}


def _least_agreed(study_id: int, uncertain, rows, ds) -> list[dict]:
    from annotation.adjudication import adjudicated_labels
    from annotation.models import Unit

    experts = adjudicated_labels(study_id)
    ids = [unit for unit, _ in uncertain]
    units = {u["pk"]: u for u in Unit.objects.filter(pk__in=ids).values(
        "pk", "prompt__external_id", "prompt__text", "output_a__candidate__name", "output_b__candidate__name")}
    by_unit: dict[int, list] = {}
    for r in rows:
        if r[5] and r[3] in units:
            took = (r[10] - r[9]).total_seconds() if r[9] is not None and r[10] is not None else None
            verdict = experts.get(r[3])
            by_unit.setdefault(r[3], []).append({"user_id": r[1], "username": r[2], "choice": r[5],
                                                 "choice_words": _CHOICE_WORDS.get(r[5], r[5]),
                                                 "rationale": r[8] or "", "seconds": _num(took),
                                                 "expert": bool(verdict and verdict["judgment"] == r[0])})
    out = []
    for unit, entropy in uncertain:
        u = units.get(unit)
        if u is None:
            continue
        label = ds.labels.get(unit) if ds else None
        out.append({"unit": unit, "prompt": u["prompt__external_id"], "prompt_text": u["prompt__text"][:300],
                    "a": u["output_a__candidate__name"], "b": u["output_b__candidate__name"],
                    "uncertainty": _num(entropy), "label": label,
                    "label_words": _CHOICE_WORDS.get(label, label) if label else None, "judgments": by_unit.get(unit, []),
                    "adjudicated": (_CHOICE_WORDS.get(experts[unit]["outcome"], experts[unit]["outcome"])
                                    if unit in experts else None)})
    return out


# --- the page's side ---------------------------------------------------------------------


def agreement_page(study, *, pseudonymize: bool, criterion: str = "") -> dict:
    """The page's data from the snapshot alone (one read): annotator names replaced by the study's
    pseudonyms when ``pseudonymize`` (managers), and the kappa heatmap of ``criterion`` (the
    pairwise choice, or the first criterion with kappas, by default)."""
    from annotation.api.selectors import pseudonym
    from arena.models import RatingSnapshot
    from arena.plots import heatmap

    snapshot = RatingSnapshot.objects.filter(study=study, slice_key=ALL, method=AGREEMENT).first()
    if snapshot is None:
        return {"snapshot": None, "criteria": [], "annotators": [], "least_agreed": [], "heatmap": "",
                "heatmap_criterion": None, "competence_note": "", "thresholds": thresholds()}
    payload = snapshot.payload

    def name(user_id, username):
        return pseudonym(study.pk, user_id) if pseudonymize else username

    names = {a["user_id"]: name(a["user_id"], a["username"]) for a in payload.get("annotators", [])}
    annotators = [{**a, "name": names[a["user_id"]]} for a in payload.get("annotators", [])]
    least = [{**u, "judgments": [{**j, "name": name(j["user_id"], j["username"])} for j in u["judgments"]]}
             for u in payload.get("least_agreed", [])]
    criteria = payload.get("criteria", [])
    chosen = next((c for c in criteria if c["key"] == criterion and c["kappas"]), None) or next(
        (c for c in criteria if c["kappas"]), None)
    svg = ""
    if chosen is not None:
        people = sorted({k["a"] for k in chosen["kappas"]} | {k["b"] for k in chosen["kappas"]},
                        key=lambda u: names.get(u, str(u)))
        index = {u: i for i, u in enumerate(people)}
        matrix: list[list[float | None]] = [[None] * len(people) for _ in people]
        for k in chosen["kappas"]:
            i, j = index[k["a"]], index[k["b"]]
            matrix[i][j] = matrix[j][i] = k["kappa"]
        for i in range(len(people)):
            matrix[i][i] = 1.0
        svg = heatmap([names.get(u, str(u)) for u in people], matrix, span=(-1.0, 1.0),
                      title=f"Cohen's kappa, {chosen['name']}"
                            + (" (quadratic weights)" if chosen.get("kappa_weights") else "")
                            + f"; blank: fewer than {MIN_SHARED} units in common")
    if pseudonymize:  # no account names or ids for managers: the pseudonyms stand in
        for row in annotators:
            del row["username"], row["user_id"]
        for u in least:
            for j in u["judgments"]:
                del j["username"], j["user_id"]
        criteria = [{**c, "kappas": [{**k, "a": names.get(k["a"], ""), "b": names.get(k["b"], "")}
                                     for k in c["kappas"]]} for c in criteria]
    return {"snapshot": snapshot, "computed_at": payload.get("computed_at"), "criteria": criteria,
            "annotators": annotators, "least_agreed": least, "least_agreed_by": payload.get("least_agreed_by", ""),
            "heatmap": svg, "heatmap_criterion": chosen["key"] if chosen else None,
            "competence_note": payload.get("competence_note", ""), "thresholds": thresholds(),
            "n_judgments": payload.get("n_judgments", 0)}
