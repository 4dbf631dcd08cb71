"""LLM judges: adding one, running it over a study's pairs (the task's body), and its results.

A judge's verdicts are kept in ``JudgeVerdict`` only; nothing here writes ``Judgment`` rows,
so human ratings, leaderboards and inter-annotator agreement never include a judge.  The
prompt, the verdict format and the agreement statistics are in :mod:`metrics.judge`.
"""
from __future__ import annotations

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from annotation.generation import base as generation_base
from annotation.models import Candidate, Judgment, StudyMember, Study, Unit
from annotation.services import ServiceError, error_scrubber, spec_policy
from metrics import judge as judge_math

from . import outcomes
from .models import Judge, JudgeVerdict

BATCH_SIZE = 16  # units per backend call (two requests each)
REPLY_LIMIT = 4000  # characters of each reply kept

def _settings(judge: Judge) -> generation_base.GenerationSettings:
    # Judges decode greedily so a rerun asks the same question the same way.
    return generation_base.GenerationSettings(max_new_tokens=judge.max_new_tokens, temperature=0.0, seed=0)


def judge_create(*, study: Study, name: str, backend: str, spec: dict, rubric: str = "", max_new_tokens: int = 512,
                 actor=None) -> Judge:
    """Add a judge; its spec is checked now by the operator's policy, as a candidate's is.

    An empty rubric takes :data:`metrics.judge.DEFAULT_RUBRIC`; any rubric must hold the
    three placeholders.  Nothing is loaded or requested.
    """
    name = (name or "").strip()
    if not name:
        raise ServiceError("a judge needs a name")
    if backend not in Judge.Backend.values:
        raise ServiceError(f"unknown backend {backend!r}; use one of {', '.join(Judge.Backend.values)}")
    rubric = rubric if rubric and rubric.strip() else judge_math.DEFAULT_RUBRIC
    try:
        judge_math.check_rubric(rubric)
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
    if study.judges.filter(name=name).exists():
        raise ServiceError(f"this study already has a judge named {name!r}")
    return Judge.objects.create(study=study, name=name, backend=backend, spec=spec, rubric=rubric,
                                max_new_tokens=max_new_tokens, created_by=actor if actor is not None and actor.is_authenticated else None)


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


def judge_run_execute(*, judge_id: int, claim: str) -> str:
    """The task's body: claim the judge's run, ask about the units without a verdict, in batches.

    Each unit is asked twice, ``output_a`` shown first and then ``output_b`` first; a unit
    whose two replies both came back gets one ``JudgeVerdict`` (written under its unique
    constraint, so a second run adds nothing).  A unit with a failed request gets no verdict,
    so the next start asks it again; the run then ends failed with the scrubbed error.
    """
    claimed = Judge.objects.filter(
        Q(status=Judge.Status.QUEUED) | Q(status=Judge.Status.RUNNING, claim=claim), pk=judge_id,
    ).update(status=Judge.Status.RUNNING, claim=claim, started_at=timezone.now(), n_failed=0)
    if not claimed:
        return "not claimed"
    judge = Judge.objects.get(pk=judge_id)
    scrub = error_scrubber(judge.spec)
    try:
        failed, first_error = _ask_missing(judge)
    except Exception as exc:  # a bad spec on this worker, a missing key, a backend crash
        error = scrub(f"judge {judge.name} failed: {type(exc).__name__}: {exc}")
        Judge.objects.filter(pk=judge_id, claim=claim).update(status=Judge.Status.FAILED, error=error,
                                                              finished_at=timezone.now())
        return "failed"
    done = JudgeVerdict.objects.filter(judge=judge).count()
    if failed:
        error = scrub(f"{failed} unit(s) got no verdict: {first_error}")
        Judge.objects.filter(pk=judge_id, claim=claim).update(status=Judge.Status.FAILED, error=error, n_done=done,
                                                              n_failed=failed, finished_at=timezone.now())
        return "failed"
    Judge.objects.filter(pk=judge_id, claim=claim).update(status=Judge.Status.DONE, n_done=done,
                                                          finished_at=timezone.now())
    return "done"


def _ask_missing(judge: Judge) -> tuple[int, str]:
    """Ask about every unit without a verdict; returns (units that failed, the first error)."""
    policy = spec_policy()
    # the worker checks the spec and the files again under its own policy
    generation_base.check_files(judge.backend, generation_base.validate_spec(judge.backend, judge.spec, policy),
                                policy, on_worker=True)
    backend = generation_base.get_backend(judge.backend, judge.spec, policy)
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


# --- reads ------------------------------------------------------------------------------


def _human_majorities(study_id: int) -> dict[int, int]:
    """Unit id -> the human majority outcome code, over pairwise judgments of annotators who
    are not excluded (units with at least one such judgment)."""
    excluded = StudyMember.objects.filter(study_id=study_id, excluded=True).values("user")
    by_unit: dict[int, list[int]] = {}
    rows = (Judgment.objects.filter(study_id=study_id, unit__is_gold=False).exclude(outcome="")
            .exclude(annotator__in=excluded).values_list("unit_id", "outcome"))
    for unit_id, outcome in rows:
        by_unit.setdefault(unit_id, []).append(outcomes.STORED_CODE[outcome])
    return {unit_id: judge_math.majority(codes) for unit_id, codes in by_unit.items()}


def judge_summary(study: Study) -> list[dict]:
    """Each judge of the study as plain data: run state, inconsistency rate, win rate per
    candidate (a tie counts half) and agreement with the human majority per unit."""
    names = dict(Candidate.objects.filter(study=study).values_list("pk", "name"))
    humans = _human_majorities(study.pk)
    summary = []
    for judge in Judge.objects.filter(study=study).order_by("name"):
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
            "id": judge.pk, "name": judge.name, "backend": judge.backend, "status": judge.status or "idle",
            "error": judge.error, "n_total": judge.n_total, "n_done": n, "n_failed": judge.n_failed,
            "inconsistent": inconsistent, "inconsistency_rate": inconsistent / n if n else None,
            "win_rates": sorted(
                ({"candidate": names.get(c, str(c)), "win_rate": sum(s) / len(s), "n": len(s)}
                 for c, s in score.items()),
                key=lambda row: -row["win_rate"]),
            "kappa": agree.kappa, "percent_agreement": agree.percent, "n_agreement": agree.n,
        })
    return summary
