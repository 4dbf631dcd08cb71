"""LLM judges: adding one, running it over a study's pairs or outputs (the task's body), and its results.

A pairwise judge's verdicts are kept in ``JudgeVerdict``, a Likert judge's points in
``JudgeScore``; nothing here writes ``Judgment`` rows,
so human ratings, leaderboards and inter-annotator agreement never include a judge.  The
prompt, the verdict format and the agreement statistics are in :mod:`metrics.judge`.
"""
from __future__ import annotations

import math
from collections.abc import Collection

import numpy as np
from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from annotation.generation import base as generation_base
from annotation.models import Candidate, Judgment, Output, StudyMember, Study, Unit
from annotation.services import ServiceError, error_scrubber, spec_policy
from metrics import judge as judge_math

from . import outcomes
from .models import Judge, JudgeScore, JudgeVerdict

BATCH_SIZE = 16  # units per backend call (two requests each)
LIKERT_BATCH_SIZE = 32  # (output, criterion) items per backend call (one request each)
REPLY_LIMIT = 4000  # characters of each reply kept
AGREEMENT_SEED = 0  # the bootstrap of a Likert judge's rank correlations: same figures on every read
AGREEMENT_ROUNDS = 1000

def _settings(judge: Judge) -> generation_base.GenerationSettings:
    # Judges decode greedily so a rerun asks the same question the same way.
    return generation_base.GenerationSettings(max_new_tokens=judge.max_new_tokens, temperature=0.0, seed=0)


def _checked(name: str, kind: str, backend: str, rubric: str, max_new_tokens, spec: dict) -> tuple[str, dict]:
    """The rubric (empty: its kind's default) and the spec as stored, or ``ServiceError`` naming the
    field: what :func:`judge_create` and :func:`judge_update` both check, with the same messages."""
    rubric = rubric if rubric and rubric.strip() else judge_math.default_rubric(kind)
    try:
        judge_math.check_rubric(rubric, kind)
    except ValueError as exc:
        raise ServiceError(str(exc)) from None
    limit = generation_base.GenerationSettings.MAX_NEW_TOKENS
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens <= limit:
        raise ServiceError(f"max_new_tokens: a whole number from 1 to {limit}")
    policy = spec_policy()
    try:
        spec = generation_base.validate_spec(backend, spec, policy)
        generation_base.check_files(backend, spec, policy)
    except generation_base.BackendError as exc:
        raise ServiceError(f"judge {name!r}: {exc}") from None
    return rubric, spec


def judge_create(*, study: Study, name: str, backend: str, spec: dict, rubric: str = "", max_new_tokens: int = 512,
                 kind: str = Judge.Kind.PAIRWISE, actor=None) -> Judge:
    """Add a judge; its spec is checked now by the operator's policy, as a candidate's is.

    ``kind`` is ``pairwise`` (which of two outputs is better) or ``likert`` (each output on
    each Likert criterion of the study; the study must have criteria).  An empty rubric takes
    the default of its kind (:func:`metrics.judge.default_rubric`); any rubric must hold its
    kind's placeholders.  Nothing is loaded or requested.
    """
    name = (name or "").strip()
    if not name:
        raise ServiceError("a judge needs a name")
    if kind not in Judge.Kind.values:
        raise ServiceError(f"kind: unknown judge kind {kind!r}; use one of {', '.join(Judge.Kind.values)}")
    if backend not in Judge.Backend.values:
        raise ServiceError(f"unknown backend {backend!r}; use one of {', '.join(Judge.Backend.values)}")
    if kind == Judge.Kind.LIKERT and not study.likert_criteria:
        raise ServiceError("kind: a Likert judge rates the study's Likert criteria, and this study has none; "
                           "add criteria in the study's task settings first")
    rubric, spec = _checked(name, kind, backend, rubric, max_new_tokens, spec)
    if study.judges.filter(name=name).exists():
        raise ServiceError(f"this study already has a judge named {name!r}")
    return Judge.objects.create(study=study, name=name, kind=kind, backend=backend, spec=spec, rubric=rubric,
                                max_new_tokens=max_new_tokens, created_by=actor if actor is not None and actor.is_authenticated else None)


EDITABLE_STATUSES = (Judge.Status.IDLE, Judge.Status.DONE, Judge.Status.FAILED)


def _answers(judge_ref) -> tuple[Exists, Exists]:
    return (Exists(JudgeVerdict.objects.filter(judge=judge_ref)), Exists(JudgeScore.objects.filter(judge=judge_ref)))


def judge_edit_refusal(judge: Judge) -> str:
    """Why ``judge`` cannot be edited in place now, or ``""``: a judge with verdicts or scores
    keeps the rubric that made them, and a queued or running one keeps what its run asks with."""
    answered = (JudgeScore if judge.kind == Judge.Kind.LIKERT else JudgeVerdict).objects.filter(judge=judge).count()
    if answered:
        what = "score(s)" if judge.kind == Judge.Kind.LIKERT else "verdict(s)"
        return (f"judge {judge.name!r} already has {answered} {what} made with its current rubric, so it is not "
                "edited in place; use \"New judge from this one\" to add a copy with your changes, and both "
                "judges' figures stay side by side on the summary")
    if judge.status in (Judge.Status.QUEUED, Judge.Status.RUNNING):
        return (f"judge {judge.name!r} is {judge.status}; wait until its run ends (its state on this page "
                "changes to done or failed) before editing it")
    return ""


def judge_edit_rows(study: Study) -> dict[int, dict]:
    """Judge id -> what the evaluator's edit and copy forms need (rubric, spec, ...) and
    ``editable``, for every judge of the study in one query (whatever their number)."""
    verdicts, scores = _answers(OuterRef("pk"))
    rows = (Judge.objects.filter(study=study).annotate(has_verdicts=verdicts, has_scores=scores)
            .values("id", "name", "kind", "backend", "spec", "rubric", "max_new_tokens", "status",
                    "has_verdicts", "has_scores"))
    return {r["id"]: {**r, "editable": not (r["has_verdicts"] or r["has_scores"]) and r["status"] in EDITABLE_STATUSES}
            for r in rows}


def judge_update(*, study: Study, judge: Judge, spec: dict, rubric: str = "", max_new_tokens: int = 512,
                 actor=None) -> Judge:
    """Change a judge's rubric, spec and ``max_new_tokens`` while it has no verdict or score
    and is not queued or running (:func:`judge_edit_refusal` says why otherwise); checked as
    :func:`judge_create` checks them, with the same messages.  Its name, kind and backend stay.

    The write is one conditional UPDATE (no answer, not queued or running), so a run started
    meanwhile either finds the new rubric or the edit is refused.  A change is recorded in the
    study's audit log (``judge_changed``, target ``judge <name>``; spec values redacted).
    """
    from annotation import audit

    if judge.study_id != study.pk:
        raise ServiceError("this judge belongs to another study")
    refusal = judge_edit_refusal(judge)
    if refusal:
        raise ServiceError(refusal)
    rubric, spec = _checked(judge.name, judge.kind, judge.backend, rubric, max_new_tokens, spec)
    old = {"rubric": judge.rubric, "max_new_tokens": judge.max_new_tokens, "spec": audit.redact(judge.spec)}
    new = {"rubric": rubric, "max_new_tokens": max_new_tokens, "spec": audit.redact(spec)}
    if old == new and judge.spec == spec:
        return judge
    verdicts, scores = _answers(OuterRef("pk"))
    with transaction.atomic():
        updated = (Judge.objects.filter(pk=judge.pk, status__in=EDITABLE_STATUSES).filter(~verdicts, ~scores)
                   .update(rubric=rubric, spec=spec, max_new_tokens=max_new_tokens))
        if updated:
            audit.record(study, actor if actor is not None and actor.is_authenticated else None,
                         audit.Action.JUDGE_CHANGED, f"judge {judge.name}", audit.changes(old, new))
    judge.refresh_from_db()
    if not updated:  # a run started, or answers came, between the check and the write
        raise ServiceError(judge_edit_refusal(judge) or f"judge {judge.name!r} changed meanwhile; try again")
    return judge


def _enqueue(judge: Judge) -> None:
    from .tasks import run_judge

    transaction.on_commit(lambda: run_judge.apply_async(args=[judge.pk], queue=settings.QUEUE_GENERATION))


def judge_run_start(*, study: Study, judge: Judge, actor=None) -> Judge:
    """Queue one task (generation queue) that asks the judge about every unit it has no
    verdict on.  A queued or running judge is left alone; a finished or failed one is queued
    again and asks only what is still missing."""
    if judge.study_id != study.pk:
        raise ServiceError("this judge belongs to another study")
    with transaction.atomic():
        updated = Judge.objects.filter(
            pk=judge.pk, status__in=[Judge.Status.IDLE, Judge.Status.DONE, Judge.Status.FAILED],
        ).update(status=Judge.Status.QUEUED, claim="", error="", finished_at=None)
        if updated:
            _enqueue(judge)
    judge.refresh_from_db()
    return judge


def _units(judge: Judge):
    """The units a judge answers: the study's pairwise units, gold items left out."""
    return Unit.objects.filter(study_id=judge.study_id, kind=Unit.Kind.PAIRWISE, is_gold=False,
                               output_b__isnull=False)


def _outputs(judge: Judge):
    """The outputs a Likert judge rates: the study's finished outputs, gold prompts left out."""
    return Output.objects.filter(study_id=judge.study_id, status=Output.Status.DONE, prompt__is_gold=False)


def _answered(judge: Judge) -> int:
    """Items with an answer: verdicts, or score rows on the study's current criteria."""
    if judge.kind == Judge.Kind.LIKERT:
        keys = [c["key"] for c in Study.objects.get(pk=judge.study_id).likert_criteria]
        return JudgeScore.objects.filter(judge=judge, criterion__in=keys, output__in=_outputs(judge)).count()
    return JudgeVerdict.objects.filter(judge=judge).count()


def judge_run_execute(*, judge_id: int, claim: str) -> str:
    """The task's body: claim the judge's run, ask about the items without an answer, in batches.

    Pairwise: each unit is asked twice, ``output_a`` shown first and then ``output_b`` first;
    a unit whose two replies both came back gets one ``JudgeVerdict``.  Likert: each (output,
    criterion) is asked once and gets one ``JudgeScore`` (value null when unparseable).  Rows
    are written under their unique constraint, so a second run adds nothing.  An item with a
    failed request gets no row, so the next start asks it again; the run then ends failed
    with the scrubbed error.
    """
    claimed = Judge.objects.filter(
        Q(status=Judge.Status.QUEUED) | Q(status=Judge.Status.RUNNING, claim=claim), pk=judge_id,
    ).update(status=Judge.Status.RUNNING, claim=claim, started_at=timezone.now(), n_failed=0)
    if not claimed:
        return "not claimed"
    judge = Judge.objects.get(pk=judge_id)
    scrub = error_scrubber(judge.spec)
    try:
        failed, first_error = _ask_missing_likert(judge) if judge.kind == Judge.Kind.LIKERT else _ask_missing(judge)
    except Exception as exc:  # a bad spec on this worker, a missing key, a backend crash
        error = scrub(f"judge {judge.name} failed: {type(exc).__name__}: {exc}")
        Judge.objects.filter(pk=judge_id, claim=claim).update(status=Judge.Status.FAILED, error=error,
                                                              finished_at=timezone.now())
        return "failed"
    done = _answered(judge)
    if failed:
        what = "item(s) got no score" if judge.kind == Judge.Kind.LIKERT else "unit(s) got no verdict"
        error = scrub(f"{failed} {what}: {first_error}")
        Judge.objects.filter(pk=judge_id, claim=claim).update(status=Judge.Status.FAILED, error=error, n_done=done,
                                                              n_failed=failed, finished_at=timezone.now())
        _request_summary(judge.study_id)  # the verdicts that did come back count
        return "failed"
    Judge.objects.filter(pk=judge_id, claim=claim).update(status=Judge.Status.DONE, n_done=done,
                                                          finished_at=timezone.now())
    _request_summary(judge.study_id)
    return "done"


def _backend(judge: Judge):
    policy = spec_policy()
    # the worker checks the spec and the files again under its own policy
    generation_base.check_files(judge.backend, generation_base.validate_spec(judge.backend, judge.spec, policy),
                                policy, on_worker=True)
    return generation_base.get_backend(judge.backend, judge.spec, policy)


def _request_summary(study_id: int) -> None:
    from .services import ratings_request

    ratings_request(study_id=study_id)  # the summary and the judges page read the verdicts from it


def _ask_missing(judge: Judge) -> tuple[int, str]:
    """Ask about every unit without a verdict; returns (units that failed, the first error)."""
    backend = _backend(judge)
    units = _units(judge)
    Judge.objects.filter(pk=judge.pk).update(n_total=units.count())
    answered = JudgeVerdict.objects.filter(judge=judge).values("unit_id")
    missing = list(units.exclude(pk__in=answered).order_by("pk")
                   .values_list("pk", "prompt__text", "output_a__text", "output_b__text"))
    failed, first_error = 0, ""
    for start in range(0, len(missing), BATCH_SIZE):
        batch = missing[start:start + BATCH_SIZE]
        requests = []
        for pk, prompt, text_a, text_b in batch:
            requests.append(generation_base.GenerationRequest(
                key=(pk, "a_first"), prompt=judge_math.build_prompt(judge.rubric, prompt, text_a, text_b), seed=0))
            requests.append(generation_base.GenerationRequest(
                key=(pk, "b_first"), prompt=judge_math.build_prompt(judge.rubric, prompt, text_b, text_a), seed=0))
        results = {r.key: r for r in backend.generate(requests, _settings(judge))}
        rows = []
        for pk, *_ in batch:
            first, second = results.get((pk, "a_first")), results.get((pk, "b_first"))
            if first is None or second is None or first.error or second.error:
                failed += 1
                first_error = first_error or next(
                    (r.error for r in (first, second) if r is not None and r.error), "no reply")
                continue
            verdict = judge_math.combine(judge_math.parse_verdict(first.text), judge_math.parse_verdict(second.text))
            rows.append(JudgeVerdict(judge=judge, unit_id=pk, outcome=outcomes.STORED[verdict.outcome],
                                     consistent=verdict.consistent,
                                     first_order_reply=(first.text or "").strip()[:REPLY_LIMIT],
                                     second_order_reply=(second.text or "").strip()[:REPLY_LIMIT]))
        JudgeVerdict.objects.bulk_create(rows, ignore_conflicts=True)
        Judge.objects.filter(pk=judge.pk).update(n_done=JudgeVerdict.objects.filter(judge=judge).count())
    return failed, first_error


def _ask_missing_likert(judge: Judge) -> tuple[int, str]:
    """Ask a Likert judge about every (output, criterion) without a score row; returns (items
    that failed, the first error).  An unparseable reply is stored with a null value."""
    criteria = list(Study.objects.get(pk=judge.study_id).likert_criteria)
    by_key = {c["key"]: c for c in criteria}
    backend = _backend(judge)
    outputs = list(_outputs(judge).order_by("pk").values_list("pk", "prompt__text", "text"))
    Judge.objects.filter(pk=judge.pk).update(n_total=len(outputs) * len(criteria))
    answered = set(JudgeScore.objects.filter(judge=judge).values_list("output_id", "criterion"))
    missing = [(pk, prompt, text, c["key"]) for pk, prompt, text in outputs for c in criteria
               if (pk, c["key"]) not in answered]
    failed, first_error = 0, ""
    for start in range(0, len(missing), LIKERT_BATCH_SIZE):
        batch = missing[start:start + LIKERT_BATCH_SIZE]
        requests = [generation_base.GenerationRequest(
            key=(pk, key), seed=0, prompt=judge_math.build_likert_prompt(
                judge.rubric, prompt, text, by_key[key]["name"], judge_math.describe(by_key[key]),
                by_key[key]["scale"]))
            for pk, prompt, text, key in batch]
        results = {r.key: r for r in backend.generate(requests, _settings(judge))}
        rows = []
        for pk, _prompt, _text, key in batch:
            result = results.get((pk, key))
            if result is None or result.error:
                failed += 1
                first_error = first_error or (result.error if result is not None else "no reply")
                continue
            rows.append(JudgeScore(judge=judge, output_id=pk, criterion=key,
                                   value=judge_math.parse_score(result.text, by_key[key]["scale"]),
                                   reply=(result.text or "").strip()[:REPLY_LIMIT]))
        JudgeScore.objects.bulk_create(rows, ignore_conflicts=True)
        Judge.objects.filter(pk=judge.pk).update(n_done=_answered(judge))
    return failed, first_error


# --- reads ------------------------------------------------------------------------------


def _human_majorities(study_id: int, left_out: Collection[int] = ()) -> dict[int, int]:
    """Unit id -> the human majority outcome code, over pairwise judgments of annotators who
    are not excluded nor in ``left_out`` (units with at least one such judgment)."""
    excluded = StudyMember.objects.filter(study_id=study_id, excluded=True).values("user")
    by_unit: dict[int, list[int]] = {}
    rows = (Judgment.objects.filter(study_id=study_id, unit__is_gold=False).exclude(outcome="")
            .exclude(annotator__in=excluded).exclude(annotator__in=list(left_out)).values_list("unit_id", "outcome"))
    for unit_id, outcome in rows:
        by_unit.setdefault(unit_id, []).append(outcomes.STORED_CODE[outcome])
    return {unit_id: judge_math.majority(codes) for unit_id, codes in by_unit.items()}


def _human_likert(study_id: int, left_out: Collection[int] = ()) -> dict[tuple[int, str], list[int]]:
    """(output id, criterion key) -> the human points it got, over Likert judgments of
    annotators who are not excluded nor in ``left_out``, gold units left out; "not applicable"
    (null) left out."""
    excluded = StudyMember.objects.filter(study_id=study_id, excluded=True).values("user")
    points: dict[tuple[int, str], list[int]] = {}
    rows = (Judgment.objects.filter(study_id=study_id, unit__kind=Unit.Kind.LIKERT, unit__is_gold=False,
                                    ratings__isnull=False)
            .exclude(annotator__in=excluded).exclude(annotator__in=list(left_out))
            .values_list("unit__output_a_id", "ratings"))
    for output_id, ratings in rows:
        for key, value in (ratings or {}).items():
            if isinstance(value, int) and not isinstance(value, bool):
                points.setdefault((output_id, key), []).append(value)
    return points


def _num(x) -> float | None:
    """A JSON-ready number: nan and infinities become ``None``."""
    return None if x is None or not math.isfinite(x) else float(x)


def _likert_agreement(pairs: list[tuple[int, list[int]]], criterion: dict) -> judge_math.LikertAgreement:
    """:func:`metrics.judge.likert_agreement` on (judge point, human points) per output; run by
    the aggregation worker for the study summary, never on a request."""
    return judge_math.likert_agreement([v for v, _ in pairs], [h for _, h in pairs], criterion["scale"],
                                       np.random.default_rng(AGREEMENT_SEED), rounds=AGREEMENT_ROUNDS,
                                       criterion=criterion["key"])


def _likert_entry(judge: Judge, criteria: list[dict], names: dict[int, str],
                  humans: dict[tuple[int, str], list[int]]) -> dict:
    """A Likert judge's figures per criterion: mean point per candidate, agreement with people,
    and the replies that gave no score."""
    keys = [c["key"] for c in criteria]
    rows = list(JudgeScore.objects.filter(judge=judge, criterion__in=keys, output__status=Output.Status.DONE,
                                          output__prompt__is_gold=False)
                .values_list("output_id", "output__candidate_id", "criterion", "value"))
    out = []
    for c in criteria:
        mine = [(o, cand, v) for o, cand, key, v in rows if key == c["key"]]
        by_cand: dict[int, list[int]] = {}
        for _o, cand, v in mine:
            if v is not None:
                by_cand.setdefault(cand, []).append(v)
        # human points on the criterion's current scale (a scale shortened after rating leaves some off it)
        on_scale = {o: h for o, _cand, _v in mine
                    if (h := sorted(x for x in humans.get((o, c["key"]), []) if 1 <= x <= c["scale"]))}
        pairs = sorted((v, on_scale[o]) for o, _cand, v in mine if v is not None and o in on_scale)
        agree = _likert_agreement(pairs, c)
        out.append({
            "key": c["key"], "name": c["name"], "scale": c["scale"],
            "means": sorted(({"candidate": names.get(cand, str(cand)), "mean": sum(v) / len(v), "n": len(v)}
                             for cand, v in by_cand.items()), key=lambda row: row["candidate"]),
            "kappa": _num(agree.kappa), "percent_agreement": _num(agree.percent), "n_agreement": agree.n,
            **{r.name: {"value": _num(r.value), "lower": _num(r.lower), "upper": _num(r.upper), "n": r.n}
               for r in (agree.kendall_tau, agree.spearman_rho)},
            "unparseable": sum(1 for *_, v in mine if v is None),
        })
    return {"n_done": len(rows), "unparseable": sum(1 for *_, v in rows if v is None), "criteria": out}


def judges_page_rows(study: Study, stored: tuple | None = None) -> tuple[list[dict], object]:
    """The judges page: each judge's run state read live (one query), its figures as the
    aggregation worker last stored them in the study summary (one query, or ``stored``: what
    :func:`metrics.summary.stored_summary` returned, when the caller read it already; see
    :func:`metrics.summary.summary_recompute`), and when that was.  A judge the worker has
    not summarised yet shows its state with empty figures and ``figures_pending``."""
    from metrics.summary import stored_summary

    snapshot, data = stored if stored is not None else stored_summary(study)
    figures = {row["id"]: row for row in data["judge_details"]}
    rows = []
    for judge in Judge.objects.filter(study=study).order_by("name"):
        rows.append({
            "inconsistent": 0, "inconsistency_rate": None, "win_rates": [], "kappa": None,
            "percent_agreement": None, "n_agreement": 0, "unparseable": None, "criteria": [],
            **figures.get(judge.pk, {}),
            "id": judge.pk, "name": judge.name, "kind": judge.kind, "backend": judge.backend,
            "status": judge.status or "idle", "error": judge.error, "n_total": judge.n_total,
            "n_done": judge.n_done, "n_failed": judge.n_failed,
            # finished after the worker last summarised: its figures are on their way
            "figures_pending": bool(judge.finished_at and (snapshot is None or judge.finished_at > snapshot.computed_at)),
        })
    return rows, snapshot.computed_at if snapshot else None


def judge_summary(study: Study, mode: dict | None = None) -> list[dict]:
    """Each judge of the study as plain data (JSON-ready).

    ``mode`` is the ratings snapshot's ``ratings_mode``: the annotators it left out (flagged
    ones, or a competence weight of 0) are left out of the human side of the agreement too;
    the others count once each (competence weights move the ratings and Likert means only).

    Every entry has the run state and the pairwise keys: inconsistency rate, win rate per
    candidate (a tie counts half) and agreement with the human majority per unit.  A Likert
    judge's pairwise keys are empty (no verdicts); its figures are under ``criteria``, one
    entry per criterion of the study: mean point per candidate with n, quadratic-weighted
    kappa and percent exact agreement with the rounded human median per output, Kendall
    tau-b and Spearman rho with the human mean per output (95% bootstrap intervals over
    outputs), and the count of unparseable replies (no score).
    """
    names = dict(Candidate.objects.filter(study=study).values_list("pk", "name"))
    judges = list(Judge.objects.filter(study=study).order_by("name"))
    kinds = {j.kind for j in judges}
    mode = mode if isinstance(mode, dict) else {}
    left_out = {*(mode.get("left_out") or []),
                *(int(k) for k, w in (mode.get("weights") or {}).items() if float(w) <= 0)}
    humans = _human_majorities(study.pk, left_out) if Judge.Kind.PAIRWISE in kinds else {}
    likert_humans = _human_likert(study.pk, left_out) if Judge.Kind.LIKERT in kinds else {}
    criteria = list(study.likert_criteria or [])
    summary = []
    for judge in judges:
        base = {"id": judge.pk, "name": judge.name, "kind": judge.kind, "backend": judge.backend,
                "status": judge.status or "idle", "error": judge.error, "n_total": judge.n_total,
                "n_failed": judge.n_failed}
        if judge.kind == Judge.Kind.LIKERT:
            summary.append({**base, "inconsistent": 0, "inconsistency_rate": None, "win_rates": [],
                            "kappa": None, "percent_agreement": None, "n_agreement": 0,
                            **_likert_entry(judge, criteria, names, likert_humans)})
            continue
        verdicts = list(JudgeVerdict.objects.filter(judge=judge)
                        .values_list("unit_id", "outcome", "consistent", "unit__cand_lo_id", "unit__cand_hi_id",
                                     "unit__a_is_lo"))
        score: dict[int, list[float]] = {}
        judged, human = [], []
        for unit_id, outcome, _consistent, lo, hi, a_is_lo in verdicts:
            code = outcomes.STORED_CODE[outcome]
            cand_a, cand_b = (lo, hi) if a_is_lo else (hi, lo)
            score.setdefault(cand_a, []).append(outcomes.SCORE[code])
            score.setdefault(cand_b, []).append(1.0 - outcomes.SCORE[code])
            if unit_id in humans:
                judged.append(code)
                human.append(humans[unit_id])
        n = len(verdicts)
        inconsistent = sum(1 for v in verdicts if not v[2])
        agree = judge_math.agreement(judged, human)
        summary.append({
            **base, "n_done": n,
            "inconsistent": inconsistent, "inconsistency_rate": inconsistent / n if n else None,
            "win_rates": sorted(
                ({"candidate": names.get(c, str(c)), "win_rate": sum(s) / len(s), "n": len(s)}
                 for c, s in score.items()),
                key=lambda row: -row["win_rate"]),
            "kappa": agree.kappa, "percent_agreement": agree.percent, "n_agreement": agree.n,
            "unparseable": None, "criteria": [],  # an unparsed pairwise reply makes its pair inconsistent
        })
    return summary
