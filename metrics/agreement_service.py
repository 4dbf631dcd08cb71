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

Competence (Dawid-Skene, MACE) is fitted on the choice and on each Likert criterion with some
disagreement, points as classes; an annotator's figure is the mean over the fits they answered.
The snapshot's payload holds everything but the kappas, which are stored one criterion per row
(method :data:`KAPPAS`), so a page view decodes one criterion's, not annotators² × criteria.
"""
from __future__ import annotations

import logging
import math
import statistics
from collections import Counter

import numpy as np
from django.db import transaction
from django.db.models import Count, Max
from django.utils import timezone

log = logging.getLogger(__name__)

ALL = "all"
AGREEMENT = "agreement"
KAPPAS, KAPPAS_SLICE = "agreement_kappas", "kappas:"  # one row per criterion: (slice "kappas:<key>", method)
ROUNDS = 1000  # bootstrap rounds of each alpha interval
LEAST_AGREED = 20  # units listed as the least agreed
MIN_SHARED = 2  # a kappa needs two annotators with this many units in common
# Flags of the annotator table (documented on the page):
MIN_COMPETENCE = 0.5  # Dawid-Skene skill (probability of a right label) below this: "low competence"
MAX_SPAMMING = 0.5  # MACE spamming probability above this (competence below 1 - this): "MACE spammer"
# ... and, for either flag, a skill under this share of the median skill of the annotators with
# enough judgments: on a Likert scale (points as classes) honest raters who are often one point
# apart sit near 0.5 on both (simulated: half the answers one point off gave DS skills 0.52-0.84,
# MACE spamming up to 0.58, a random rater DS 0.18, MACE spamming 0.99), so the absolute mark alone
# would flag them; relative to the others it still catches the random rater
RELATIVE_TO_MEDIAN = 0.5
ALPHA_GAIN = 0.1  # alpha of everyone else higher by this much without the annotator: "alpha improves"
RELIABLE, TENTATIVE = 0.8, 0.667  # Krippendorff's (2004) rule of thumb for alpha

CHOICE = "choice"
_CHOICE_WORDS = {"a": "A better", "b": "B better", "tie": "tie", "both_bad": "both bad"}
_CHOICE_LABELS = ("a", "b", "tie", "both_bad")


def min_judgments() -> int:
    """Judgments an annotator needs before competence and MACE flags apply to them
    (``EVALSITE_AGREEMENT_MIN_JUDGMENTS``): a latent-class fit on a handful of answers flags
    honest people by chance."""
    from django.conf import settings

    return int(getattr(settings, "EVALSITE_AGREEMENT_MIN_JUDGMENTS", 20))


def thresholds() -> dict:
    return {"min_competence": MIN_COMPETENCE, "max_spamming": MAX_SPAMMING, "alpha_gain": ALPHA_GAIN,
            "relative_to_median": RELATIVE_TO_MEDIAN,
            "reliable": RELIABLE, "tentative": TENTATIVE, "rounds": ROUNDS, "min_shared": MIN_SHARED,
            "min_judgments": min_judgments(), "least_agreed": LEAST_AGREED}


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
    kappas = payload.pop("kappas")
    marker = {"n_judgments": n, "last_judgment_id": last, "study_version": study.version, "computed_at": now}
    with transaction.atomic():
        snapshot, _ = RatingSnapshot.objects.update_or_create(
            study_id=study_id, slice_key=ALL, method=AGREEMENT, defaults={"payload": payload, **marker})
        # each criterion's kappas in a row of its own: the page reads one criterion's, never all
        for key, pairs in kappas.items():
            RatingSnapshot.objects.update_or_create(
                study_id=study_id, slice_key=KAPPAS_SLICE + key, method=KAPPAS,
                defaults={"payload": {"criterion": key, "pairs": pairs}, **marker})
        RatingSnapshot.objects.filter(study_id=study_id, method=KAPPAS).exclude(
            slice_key__in=[KAPPAS_SLICE + key for key in kappas]).delete()
    return snapshot


def _load(study) -> list[tuple]:
    from arena.selectors import slice_judgments

    return list(slice_judgments(study.pk).order_by("pk").values_list(
        "pk", "annotator_id", "annotator__username", "unit_id", "unit__kind", "outcome", "ratings", "tags",
        "rationale", "served_at", "submitted_at"))


def _criteria_triples(study, rows) -> list[dict]:
    """The criteria measured, each with its triples (annotator id, unit id, value).

    A Likert answer off the criterion's current scale (the scale was shortened after it was
    given) or not a whole number is left out and counted in ``off_scale``."""
    out = [{"key": CHOICE, "name": "Pairwise choice", "kind": "pairwise", "level": "nominal",
            "labels": list(_CHOICE_LABELS), "off_scale": 0, "triples": [(r[1], r[3], r[5]) for r in rows if r[5]]}]
    likert = [r for r in rows if r[4] == "likert"]
    for c in study.likert_criteria or ():
        scale = int(c["scale"])
        triples, off = [], 0
        for r in likert:
            value = r[6].get(c["key"]) if isinstance(r[6], dict) else None
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= scale:
                off += 1
                continue
            triples.append((r[1], r[3], value))
        out.append({"key": c["key"], "name": c["name"], "kind": "likert", "level": c.get("level", "ordinal"),
                    "labels": list(range(1, scale + 1)), "scale": scale, "off_scale": off, "triples": triples})
    for t in study.failure_tags or ():
        triples = [(r[1], r[3], int(t["key"] in (r[7] or ()))) for r in likert]
        out.append({"key": "tag:" + t["key"], "name": f"Tag “{t['label']}”", "kind": "tag", "level": "nominal",
                    "labels": [0, 1], "off_scale": 0, "triples": triples})
    return out


def _measure(study_id: int, c: dict) -> tuple[dict, list]:
    """(the criterion's row, its kappas as [a, b, shared units, kappa, percent agreement] lists)."""
    from . import agreement

    triples = c["triples"]
    row = {k: c[k] for k in ("key", "name", "kind", "level")}
    row.update(alpha=None, lower=None, upper=None, units=0, annotators=0, pairable=0, percent_agreement=None,
               fleiss=None, pairs=0, off_scale=c["off_scale"], scale=c.get("scale"), note="")
    if not triples:
        row.update(verdict=verdict(None), note="no answers yet")
        return row, []
    try:
        res = agreement.alpha_interval(triples, c["level"], np.random.default_rng(study_id), rounds=ROUNDS)
    except ValueError as exc:
        row.update(verdict=verdict(None), note=str(exc))
        return row, []
    row.update(alpha=_num(res.alpha), lower=_num(res.lower), upper=_num(res.upper), units=res.units,
               annotators=res.annotators, pairable=res.pairable, percent_agreement=_num(res.percent_agreement))
    row["verdict"] = verdict(row["alpha"])
    weights = None if c["level"] == "nominal" else "quadratic"
    row["kappa_weights"] = weights
    kappas = [[k.a, k.b, k.n, _num(k.kappa), _num(k.percent)]
              for k in agreement.pairwise_kappas(triples, weights=weights, labels=c["labels"], min_shared=MIN_SHARED)]
    row["pairs"] = len(kappas)
    fleiss = agreement.fleiss_kappa(triples)
    if fleiss is not None:
        row["fleiss"] = {"kappa": _num(fleiss.kappa), "percent": _num(fleiss.percent), "units": fleiss.units,
                         "of_units": fleiss.total_units, "raters_per_unit": fleiss.raters_per_unit}
    return row, kappas


def _measure_safely(study_id: int, c: dict) -> tuple[dict, list]:
    """:func:`_measure`, with any failure kept to its criterion: the rest of the snapshot is still computed."""
    try:
        return _measure(study_id, c)
    except Exception as exc:  # noqa: BLE001 - one criterion's fault must not stop every refresh
        log.exception("agreement of study %s, criterion %s failed", study_id, c["key"])
        row = {k: c[k] for k in ("key", "name", "kind", "level")}
        row.update(alpha=None, lower=None, upper=None, units=0, annotators=0, pairable=0, percent_agreement=None,
                   fleiss=None, pairs=0, off_scale=c["off_scale"], scale=c.get("scale"), verdict=verdict(None),
                   note=f"not computed: {type(exc).__name__}: {str(exc)[:200]}")
        return row, []


def _competence(study_id: int, criteria: list[dict], measured: list[dict]) -> tuple[list[dict], list[str]]:
    """Dawid-Skene and MACE on the pairwise choice and on each Likert criterion (its points as classes).

    Returns the fits ({"key", "title", "labels", "triples", "ds", "mace"}) and notes for the page.  A
    criterion without a unit judged twice, or with no disagreement at all (nothing tells a careful
    annotator from a careless one), is not fitted; crowd-kit missing leaves every fit out."""
    from . import agreement

    fits, notes = [], []
    for c, row in zip(criteria, measured):
        if c["kind"] not in ("pairwise", "likert") or not c["triples"]:
            continue
        title = "the pairwise choice" if c["kind"] == "pairwise" else c["name"]
        if not row["units"]:
            continue
        try:
            if agreement.split_units(c["triples"]) == 0:
                notes.append(f"No competence from {title}: every unit judged twice got the same answer from all, "
                             "so there is no disagreement to learn from.")
                continue
            fit = {"key": c["key"], "title": title, "labels": c["labels"], "triples": c["triples"]}
            for method in ("dawid_skene", "mace"):
                fit["ds" if method == "dawid_skene" else "mace"] = agreement.competence(
                    c["triples"], method=method, seed=study_id)
        except ImportError:
            return [], ["crowd-kit is not installed where the worker runs: competence not computed."]
        except Exception as exc:  # noqa: BLE001 - a failed fit leaves out that criterion only
            notes.append(f"No competence from {title}: {type(exc).__name__}: {str(exc)[:200]}.")
            continue
        fits.append(fit)
    if not fits and not notes:
        notes.append("Competence needs units with two judgments or more.")
    return fits, notes


def competence_flags(eligible: list[dict]) -> tuple[set, set, float, float]:
    """(low-competence ids, MACE-spammer ids, median DS skill, median MACE competence) among the
    annotators with enough judgments (rows with "user_id", "competence", "mace").  A flag needs
    the absolute mark and a figure under :data:`RELATIVE_TO_MEDIAN` × the median, so a fit that
    rates everyone low (nobody disagrees much; a Likert scale where honest raters are often one
    point apart) flags nobody."""
    ds_median = _median([a["competence"] for a in eligible if a["competence"] is not None])
    mace_median = _median([a["mace"] for a in eligible if a["mace"] is not None])
    low = {a["user_id"] for a in eligible if a["competence"] is not None and a["competence"] < MIN_COMPETENCE
           and a["competence"] < RELATIVE_TO_MEDIAN * ds_median}
    spam = {a["user_id"] for a in eligible if a["mace"] is not None and 1 - a["mace"] > MAX_SPAMMING
            and a["mace"] < RELATIVE_TO_MEDIAN * mace_median}
    return low, spam, ds_median, mace_median


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def _vote_entropy(triples) -> dict:
    votes: dict = {}
    for _, unit, value in triples:
        votes.setdefault(unit, Counter())[value] += 1
    out = {}
    for unit, counter in votes.items():
        total = sum(counter.values())
        out[unit] = -sum(n / total * math.log(n / total) for n in counter.values())
    return out


def _uncertain_units(criteria: list[dict], fits: list[dict]) -> tuple[list[tuple], str]:
    """The :data:`LEAST_AGREED` units with the most uncertain answer, over the pairwise choice and every
    Likert criterion: (unit, entropy in nats, share of the maximum ln K, criterion key), most uncertain
    first.  Only units with two judgments or more qualify; entropies of scales of different sizes are
    compared as shares of their maximum."""
    by_key = {f["key"]: f for f in fits}
    best: dict = {}
    sources = set()
    for c in criteria:
        if c["kind"] not in ("pairwise", "likert") or not c["triples"]:
            continue
        judged = Counter(unit for _, unit, _ in c["triples"])
        fit = by_key.get(c["key"])
        if fit is not None:
            entropy = fit["ds"].uncertainty
            sources.add("Dawid-Skene posterior entropy")
        else:
            entropy = _vote_entropy(c["triples"])
            sources.add("entropy of the votes")
        top = math.log(max(len(c["labels"]), 2))
        for unit, h in entropy.items():
            if judged.get(unit, 0) < 2:
                continue
            share = h / top
            if unit not in best or share > best[unit][2]:
                best[unit] = (unit, h, share, c["key"])
    ranked = sorted(best.values(), key=lambda x: (-x[2], x[0]))[:LEAST_AGREED]
    return ranked, " and ".join(sorted(sources)) or "entropy of the votes"


def agreement_payload(study) -> dict:
    """The snapshot's figures (plain JSON, no NaN): criteria, kappas by criterion, annotators,
    least-agreed units."""
    from annotation.api.selectors import pseudonym
    from arena.models import RatingSnapshot
    from arena.services import QUALITY, quality_recompute

    from . import agreement, gold

    rows = _load(study)
    criteria = _criteria_triples(study, rows)
    measured, kappas = [], {}
    for c in criteria:
        row, pairs = _measure_safely(study.pk, c)
        measured.append(row)
        kappas[c["key"]] = pairs
    titles = {c["key"]: c["name"] if c["kind"] != "pairwise" else "the pairwise choice" for c in criteria}
    fits, notes = _competence(study.pk, criteria, measured)

    # per annotator: alpha with and without them on every criterion, failure tags included
    loo: dict[int, dict[str, list]] = {}
    for c in criteria:
        if len({t[0] for t in c["triples"]}) < 3:
            continue  # without one of two annotators there is nobody to agree with
        try:
            for annotator, (with_, without) in agreement.leave_one_out(c["triples"], c["level"]).items():
                loo.setdefault(annotator, {})[c["key"]] = [_num(with_), _num(without)]
        except Exception:  # noqa: BLE001 - a criterion that cannot be measured has no with/without
            log.exception("leave-one-out alpha of study %s, criterion %s failed", study.pk, c["key"])
            continue
    kinds = {c["key"]: c["kind"] for c in criteria}
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
    enough = min_judgments()
    annotators = []
    for user_id in sorted(names, key=lambda u: names[u]):
        q = stats.get(str(user_id)) or {}
        right, answered = q.get("gold_right", 0), q.get("gold_answered", 0)
        share = gold.accuracy(right, answered) if answered else None
        median = q.get("median_seconds")
        if median is None and seconds.get(user_id):  # a Likert-only annotator: the same server-clock time
            median = statistics.median(seconds[user_id])
        own = loo.get(user_id, {})

        def gain(kind, own=own):
            gains = [w[1] - w[0] for key, w in own.items() if kinds.get(key) == kind and None not in w]
            return _num(sum(gains) / len(gains)) if gains else None

        ds_by = {f["key"]: f["ds"].skills[user_id] for f in fits if user_id in f["ds"].skills}
        mace_by = {f["key"]: f["mace"].skills[user_id] for f in fits if user_id in f["mace"].skills}
        annotators.append({
            "user_id": user_id, "username": names[user_id], "pseudonym": pseudonym(study.pk, user_id),
            "judgments": counts[user_id], "loo": own, "choice_alpha": own.get(CHOICE, [None, None]),
            "likert_gain": gain("likert"), "tag_gain": gain("tag"),
            "gold_right": right, "gold_answered": answered,
            "gold_accuracy": _num(share.share) if share else None,
            "gold_below": bool(share and gold.below_pass(right, answered, study.gold_pass / 100)),
            # the mean skill over the criteria (the choice included) the annotator answered, n of them
            "competence": _num(statistics.fmean(ds_by.values())) if ds_by else None,
            "mace": _num(statistics.fmean(mace_by.values())) if mace_by else None,
            "competence_n": len(ds_by), "competence_by": {k: _num(v) for k, v in ds_by.items()},
            "median_seconds": _num(median)})

    eligible = [a for a in annotators if a["judgments"] >= enough]
    low_ids, spam_ids, ds_median, mace_median = competence_flags(eligible)
    for row in annotators:
        flags = []
        if row["user_id"] in low_ids:
            flags.append(f"Low competence: Dawid-Skene skill {row['competence']:.2f} (below {MIN_COMPETENCE} and "
                         f"under {RELATIVE_TO_MEDIAN:g} × the others' median {ds_median:.2f}).")
        if row["user_id"] in spam_ids:
            flags.append(f"MACE spammer: spamming probability {1 - row['mace']:.2f} (above {MAX_SPAMMING}; "
                         f"competence under {RELATIVE_TO_MEDIAN:g} × the others' median {mace_median:.2f}).")
        for key, (with_, without) in row["loo"].items():
            if with_ is not None and without is not None and without - with_ >= ALPHA_GAIN:
                flags.append(f"Alpha improves without them on {titles[key]}: {with_:.2f} → {without:.2f}.")
        if row["gold_below"]:
            flags.append(f"Failing gold: {row['gold_right']}/{row['gold_answered']} right "
                         f"(pass mark {study.gold_pass}%).")
        row["flags"] = flags
    if fits and any(a["competence"] is not None and a["judgments"] < enough for a in annotators):
        notes.append(f"Competence and MACE flags wait for {enough} judgments (EVALSITE_AGREEMENT_MIN_JUDGMENTS).")

    uncertain, source = _uncertain_units(criteria, fits)
    least = _least_agreed(study, uncertain, rows, fits, criteria)
    return {"criteria": measured, "kappas": kappas, "annotators": annotators,
            "competence_note": " ".join(notes), "competence_from": [f["title"] for f in fits],
            "least_agreed": least, "least_agreed_by": source, "n_judgments": len(rows)}


def _points(ratings, criteria: list[dict]) -> str:
    if not isinstance(ratings, dict):
        return ""
    return " · ".join(f"{c['name']} {ratings[c['key']] if ratings.get(c['key']) is not None else 'n/a'}"
                      for c in criteria if c["kind"] == "likert" and c["key"] in ratings)


def _least_agreed(study, uncertain, rows, fits, criteria) -> list[dict]:
    from annotation.adjudication import adjudicated_labels
    from annotation.api.selectors import pseudonym
    from annotation.models import Unit

    experts = adjudicated_labels(study.pk)
    ids = [u[0] for u in uncertain]
    units = {u["pk"]: u for u in Unit.objects.filter(pk__in=ids).values(
        "pk", "kind", "prompt__external_id", "prompt__text", "output_a__candidate__name",
        "output_b__candidate__name")}
    by_key = {f["key"]: f for f in fits}
    names = {c["key"]: c["name"] for c in criteria}
    by_unit: dict[int, list] = {}
    for r in rows:
        if r[3] in units and (r[5] or r[4] == "likert"):
            took = (r[10] - r[9]).total_seconds() if r[9] is not None and r[10] is not None else None
            verdict_ = experts.get(r[3])
            by_unit.setdefault(r[3], []).append({
                "user_id": r[1], "username": r[2], "pseudonym": pseudonym(study.pk, r[1]), "choice": r[5],
                "choice_words": _CHOICE_WORDS.get(r[5], r[5]) if r[5] else _points(r[6], criteria),
                "rationale": r[8] or "", "seconds": _num(took),
                "expert": bool(verdict_ and verdict_["judgment"] == r[0])})
    out = []
    for unit, entropy, share, key in uncertain:
        u = units.get(unit)
        if u is None:
            continue
        fit = by_key.get(key)
        label = fit["ds"].labels.get(unit) if fit else None
        pairwise = key == CHOICE
        expert = experts.get(unit)
        adjudicated = None
        if expert:
            adjudicated = (_CHOICE_WORDS.get(expert["outcome"], expert["outcome"]) if expert["outcome"]
                           else _points(expert.get("ratings"), criteria))
        out.append({"unit": unit, "kind": "pairwise" if pairwise else "likert", "criterion": key,
                    "criterion_name": names.get(key, key), "prompt": u["prompt__external_id"],
                    "prompt_text": u["prompt__text"][:300], "a": u["output_a__candidate__name"],
                    "b": u["output_b__candidate__name"], "uncertainty": _num(entropy), "uncertainty_share": _num(share),
                    "label": label,
                    "label_words": (_CHOICE_WORDS.get(label, label) if pairwise else f"{names.get(key, key)} {label}")
                    if label is not None else None,
                    "judgments": by_unit.get(unit, []), "adjudicated": adjudicated})
    return out


# --- the page's side ---------------------------------------------------------------------

def _read(study) -> dict | None:
    """The stored payload (its kappas live in rows of their own) and when it was computed; None without one."""
    from arena.models import RatingSnapshot

    row = (RatingSnapshot.objects.filter(study=study, slice_key=ALL, method=AGREEMENT)
           .values("computed_at", "payload").first())
    if row is None:
        return None
    return {**(row["payload"] or {}), "snapshot_computed_at": row["computed_at"]}


def _read_kappas(study, keys=None) -> dict:
    """Criterion key -> stored kappas, for ``keys`` (None: every criterion), in one query."""
    from arena.models import RatingSnapshot

    rows = RatingSnapshot.objects.filter(study=study, method=KAPPAS)
    if keys is not None:
        rows = rows.filter(slice_key__in=[KAPPAS_SLICE + k for k in keys])
    return {p.get("criterion"): p.get("pairs") or [] for p in rows.values_list("payload", flat=True)}


def _kappa_rows(pairs, name) -> list[dict]:
    """Stored kappas ([a, b, n, kappa, percent]; older snapshots: dicts) as the page's rows."""
    out = []
    for k in pairs or ():
        a, b, n, kappa, percent = (k["a"], k["b"], k["n"], k["kappa"], k["percent"]) if isinstance(k, dict) else k
        out.append({"a": name(a), "b": name(b), "a_id": a, "b_id": b, "n": n, "kappa": kappa, "percent": percent})
    return out


def agreement_page(study, *, pseudonymize: bool, criterion: str = "", export: bool = False) -> dict:
    """The page's data from the snapshot alone: annotator names (the pseudonyms stored with the
    snapshot when ``pseudonymize``: managers), and the kappa heatmap and pair table of one criterion
    (``criterion``; by default the pairwise choice, or the first criterion with kappas).  Only that
    criterion's kappas are read; ``export`` (the JSON export) reads every criterion's."""
    from arena.plots import heatmap

    base = {"snapshot": None, "criteria": [], "annotators": [], "least_agreed": [], "heatmap": "",
            "heatmap_criterion": None, "heatmap_pairs": 0, "heatmap_rows": "", "competence_note": "",
            "competence_from": [], "thresholds": thresholds(), "pseudonymize": pseudonymize}
    data = _read(study)
    if data is None:
        return base
    # the criterion asked for (or the choice) is read before knowing it has kappas: one query either way
    guess = criterion if criterion and "\x00" not in criterion else CHOICE  # PostgreSQL refuses NUL in text
    first = _read_kappas(study, [guess])
    from annotation.api.selectors import pseudonym

    rows = data.get("annotators") or []
    stored = {a["user_id"]: (a.get("pseudonym") or pseudonym(study.pk, a["user_id"]), a["username"]) for a in rows}

    def name(user_id):
        pseudo, username = stored.get(user_id) or (pseudonym(study.pk, user_id), str(user_id))
        return pseudo if pseudonymize else username

    hidden = ("username", "user_id", "pseudonym") if pseudonymize else ("pseudonym",)
    annotators = [{**{k: v for k, v in a.items() if k not in hidden}, "name": name(a["user_id"])} for a in rows]
    least = [{**u, "judgments": [{**{k: v for k, v in j.items() if k not in hidden}, "name": name(j["user_id"])}
                                 for j in u["judgments"]]} for u in data.get("least_agreed") or []]
    criteria = data.get("criteria") or []
    with_pairs = [c for c in criteria if c.get("pairs", len(c.get("kappas") or ()))]
    chosen = next((c for c in with_pairs if c["key"] == criterion), None) or (with_pairs[0] if with_pairs else None)
    if export:
        every = _read_kappas(study)
        names = {user_id: name(user_id) for user_id in stored} if pseudonymize else {}

        def exported(pairs):
            if pairs and isinstance(pairs[0], dict):  # an older snapshot's rows
                pairs = [[k["a"], k["b"], k["n"], k["kappa"], k["percent"]] for k in pairs]
            if pseudonymize:
                return [{"a": names.get(a) or name(a), "b": names.get(b) or name(b), "n": n, "kappa": k, "percent": p}
                        for a, b, n, k, p in pairs or ()]
            return [{"a": a, "b": b, "n": n, "kappa": k, "percent": p} for a, b, n, k, p in pairs or ()]

        criteria = [{**c, "kappas": exported(every.get(c["key"], c.get("kappas")))} for c in criteria]
    svg, pairs = "", []
    if chosen is not None and not export:  # the export carries the kappas, not a picture of them
        stored_pairs = chosen.get("kappas")  # older snapshots kept them in the criterion's row
        if stored_pairs is None:
            stored_pairs = (first if chosen["key"] == guess else _read_kappas(study, [chosen["key"]])).get(
                chosen["key"])
        pairs = _kappa_rows(stored_pairs, name)
        svg = _heatmap_svg(chosen, pairs, heatmap)
    computed_at = data.get("computed_at")
    return {**base, "snapshot": {"computed_at": data["snapshot_computed_at"]}, "computed_at": computed_at,
            "criteria": criteria, "annotators": annotators, "least_agreed": least,
            "least_agreed_by": data.get("least_agreed_by") or "", "heatmap": svg,
            "heatmap_criterion": chosen["key"] if chosen else None, "heatmap_name": chosen["name"] if chosen else "",
            "heatmap_pairs": len(pairs), "heatmap_rows": _pairs_table(pairs),
            "competence_note": data.get("competence_note") or "",
            "competence_from": data.get("competence_from") or [], "n_judgments": data.get("n_judgments") or 0}


def _pairs_table(pairs: list[dict]) -> str:
    """The heatmap's pairs as table rows (escaped HTML): written here rather than in the template,
    whose per-tag cost made 4,950 rows (100 annotators) most of the page's time."""
    from html import escape

    def cell(value, fmt):
        return fmt(value) if value is not None else "–"

    return "".join(
        f"<tr><td>{escape(str(p['a']))}</td><td>{escape(str(p['b']))}</td>"
        f"<td>{cell(p['kappa'], lambda v: f'{v:.3f}') if p['kappa'] is not None else 'undefined'}</td>"
        f"<td>{cell(p['percent'], lambda v: f'{100 * v:.0f}%')}</td><td>{int(p['n'])}</td></tr>"
        for p in pairs)


def _heatmap_svg(chosen: dict, pairs: list[dict], heatmap) -> str:
    people = sorted({p["a"] for p in pairs} | {p["b"] for p in pairs})
    index = {u: i for i, u in enumerate(people)}
    matrix: list[list[float | None]] = [[None] * len(people) for _ in people]
    tips: list[list[str]] = [[""] * len(people) for _ in people]
    for p in pairs:
        i, j = index[p["a"]], index[p["b"]]
        matrix[i][j] = matrix[j][i] = p["kappa"]
        kappa = "undefined" if p["kappa"] is None else f"{p['kappa']:.3f}"
        percent = "–" if p["percent"] is None else f"{100 * p['percent']:.1f}%"
        tips[i][j] = tips[j][i] = (f"{p['a']} and {p['b']}: kappa {kappa}, percent agreement {percent}, "
                                   f"{p['n']} units in common")
    for i in range(len(people)):
        matrix[i][i] = 1.0
    return heatmap(people, matrix, span=(-1.0, 1.0), tooltips=tips,
                   title=f"Cohen's kappa, {chosen['name']}"
                         + (" (quadratic weights)" if chosen.get("kappa_weights") else "")
                         + f"; blank: fewer than {MIN_SHARED} units in common")
