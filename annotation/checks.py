"""Known-answer checks and the qualification quiz: every state change about them, in one place.

A *check* is a unit with a known answer (``Unit.is_gold``, its answer in ``Unit.expected``,
scored by :mod:`metrics.gold`):

* a **gold item**: a pair of the study's own outputs with a known better one (or a known
  tie), or one output with the points it deserves on some criteria, from a file the
  evaluator uploads;
* an **attention check**: a prompt shown with an answer to *another* prompt; a pair of an
  on-topic and an off-topic answer (the on-topic one is better), or, in a Likert study, the
  off-topic answer alone (a low point expected on a criterion the evaluator names).

Checks are created closed (``needed = 0``), so the ordinary lease never serves them;
``annotation.services.assignment_next`` serves one at the study's ``check_rate``, once to
each annotator, through the same lease, page and payload as any task, so an annotator cannot
tell them apart.  Their judgments count for the annotator's check accuracy only: never in
ratings, Likert summaries or progress.

The quiz (``Study.quiz_size`` > 0) asks that many gold items before a first task, tells the
annotator after each answer whether it was right, and admits them at ``quiz_pass`` percent
right, within ``quiz_attempts`` tries.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from django.db import transaction
from django.db.models import Count, F
from django.utils import timezone

from metrics import gold

from . import audit, markdown, taskconfig, uploads
from .models import Candidate, Judgment, Output, Prompt, QuizAttempt, Study, StudyMember, Unit

MAX_CHECK_RATE = 50  # percent: beyond this the study measures annotators more than models


class CheckError(ValueError):
    """A check or quiz request that cannot be done, with the reason in plain words."""


def checks_settings_update(*, study: Study, check_rate: int, gold_pass: int, quiz_size: int, quiz_pass: int,
                           quiz_attempts: int, actor=None) -> Study:
    """Set how often checks are served, the accuracy flagged in the quality table, and the quiz."""
    limits = {"check_rate": (check_rate, 0, MAX_CHECK_RATE), "gold_pass": (gold_pass, 0, 100),
              "quiz_size": (quiz_size, 0, 50), "quiz_pass": (quiz_pass, 1, 100), "quiz_attempts": (quiz_attempts, 1, 10)}
    for name, (value, low, high) in limits.items():
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise CheckError(f"{name}: must be a whole number from {low} to {high}, got {value!r}")
    if quiz_size:
        available = gold_units(study, kind="gold").count()
        if quiz_size > available:
            raise CheckError(f"quiz_size: the quiz asks {quiz_size} gold items but the study has {available}; "
                             "add gold items first (attention checks are not asked in the quiz)")
    changed = {name: value for name, (value, _, _) in limits.items() if getattr(study, name) != value}
    with transaction.atomic():
        for name, value in changed.items():
            setattr(study, name, value)
        if changed:
            study.save(update_fields=list(changed))
            audit.record(study, actor, audit.Action.CHECK_SETTINGS_CHANGED, study.name, changed)
    return study


def gold_units(study: Study, *, kind: str | None = None):
    """The study's checks; ``kind`` "gold" or "attention" narrows them."""
    units = Unit.objects.filter(study=study, is_gold=True)
    return units.filter(expected__kind=kind) if kind else units


def _units_total(study: Study) -> None:
    """Checks are not tasks to finish: the annotator's progress counts only the others."""
    Study.objects.filter(pk=study.pk).update(units_total=Unit.objects.filter(study=study, is_gold=False).count())


def _changed_counts(study: Study) -> None:
    """What counts changed (a measured unit became a check): snapshots are redone."""
    Study.objects.filter(pk=study.pk).update(version=F("version") + 1)


@dataclass(frozen=True)
class _Planned:
    unit: Unit | None  # an existing unit to turn into a check, or None to create ``new``
    new: Unit | None
    expected: dict


def checks_import(*, study: Study, data: uploads.UploadData, filename: str, actor=None) -> int:
    """Add the gold items and attention checks of a file (:func:`annotation.uploads.parse_checks`).

    The file is checked whole before anything is written: every prompt, candidate and
    output it names must exist (outputs finished), each check once.  A pair that is already
    a unit of the study becomes the check (its judgments so far become answers to it; the
    ratings are redone without it); otherwise the check is created.  Returns how many.
    """
    rows = uploads.parse_checks(data, filename, criteria=study.likert_criteria)
    prompts = dict(Prompt.objects.filter(study=study, external_id__in={r.prompt_id for r in rows})
                   .values_list("external_id", "pk"))
    names = {r.a for r in rows} | {r.b for r in rows} | {r.candidate for r in rows}
    candidates = dict(Candidate.objects.filter(study=study, name__in=names - {""}).values_list("name", "pk"))
    outputs = {}
    for pk, prompt_id, cand, sample, status in Output.objects.filter(
            study=study, prompt_id__in=prompts.values(), candidate_id__in=candidates.values()).values_list(
            "pk", "prompt_id", "candidate_id", "sample_index", "status"):
        outputs[(prompt_id, cand, sample)] = (pk, status)
    errors: list[uploads.RowError] = []
    plans: list[_Planned] = []
    seen: dict[tuple, int] = {}

    def fail(row, field, message):
        errors.append(uploads.RowError(row.line, field, message))

    def output_of(row, field, name, prompt_pk):
        cand = candidates.get(name)
        if cand is None:
            fail(row, field, f"no candidate named {name!r} in this study")
            return None, None
        found = outputs.get((prompt_pk, cand, row.sample_index))
        if found is None:
            fail(row, field, f"{name!r} has no output for prompt {row.prompt_id!r} (sample {row.sample_index})")
            return None, cand
        if found[1] != Output.Status.DONE:
            fail(row, field, f"{name!r}'s output for prompt {row.prompt_id!r} is {found[1]}, not done")
            return None, cand
        return found[0], cand

    for row in rows:
        prompt_pk = prompts.get(row.prompt_id)
        if prompt_pk is None:
            fail(row, "prompt", f"no prompt with id {row.prompt_id!r} in this study")
            continue
        expected = {"kind": row.kind}
        if row.note:
            expected["note"] = row.note
        if row.candidate:
            if study.task_kinds == "pairwise":
                fail(row, "candidate", "this study asks for pairs only: a rating check needs Likert tasks")
                continue
            out, cand = output_of(row, "candidate", row.candidate, prompt_pk)
            if out is None:
                continue
            key = ("likert", out)
            expected["ratings"] = {k: list(v) for k, v in row.ratings.items()}
            unit = Unit(study=study, kind=Unit.Kind.LIKERT, prompt_id=prompt_pk, output_a_id=out, output_b_id=None,
                        cand_lo_id=cand, cand_hi_id=None, a_is_lo=True)
        else:
            if study.task_kinds == "likert":
                fail(row, "a", "this study asks for ratings only: a pair check needs pairwise tasks")
                continue
            out_a, cand_a = output_of(row, "a", row.a, prompt_pk)
            out_b, cand_b = output_of(row, "b", row.b, prompt_pk)
            if out_a is None or out_b is None:
                continue
            flip = out_a > out_b  # units keep output_a < output_b; the file's a may be either
            lo_out, hi_out = sorted((out_a, out_b))
            better = row.better if row.better == "tie" or not flip else {"a": "b", "b": "a"}[row.better]
            expected["better"] = better
            key = ("pairwise", lo_out, hi_out)
            cand_of = {out_a: cand_a, out_b: cand_b}
            lo, hi = sorted((cand_a, cand_b))
            unit = Unit(study=study, kind=Unit.Kind.PAIRWISE, prompt_id=prompt_pk, output_a_id=lo_out,
                        output_b_id=hi_out, cand_lo_id=lo, cand_hi_id=hi, a_is_lo=cand_of[lo_out] == lo)
        if key in seen:
            fail(row, None, f"the same check as line {seen[key]}")
            continue
        seen[key] = row.line
        plans.append(_Planned(None, unit, expected))
    if errors:
        raise uploads.UploadError(errors, len(rows))
    with transaction.atomic():
        existing = {}
        for unit in Unit.objects.select_for_update().filter(study=study, prompt_id__in=prompts.values()):
            existing[(unit.kind, unit.output_a_id, unit.output_b_id) if unit.kind == Unit.Kind.PAIRWISE
                     else (unit.kind, unit.output_a_id)] = unit
        created, turned = [], 0
        for plan in plans:
            new = plan.new
            key = ((new.kind, new.output_a_id, new.output_b_id) if new.kind == Unit.Kind.PAIRWISE
                   else (new.kind, new.output_a_id))
            old = existing.get(key)
            if old is not None and (old.is_gold or not old.rule_tie):
                # what its judgments so far answered becomes an answer to the check
                Unit.objects.filter(pk=old.pk).update(is_gold=True, expected=plan.expected, needed=0)
                turned += 1
                continue
            new.is_gold, new.expected, new.needed, new.shuffle = True, plan.expected, 0, random.randrange(2**31)
            created.append(new)
        Unit.objects.bulk_create(created)
        _units_total(study)
        if turned:
            _changed_counts(study)
        audit.record(study, actor, audit.Action.CHECKS_ADDED, filename[:200],
                     {"checks": len(plans), "from_existing_pairs": turned})
    return len(plans)


def checks_make_attention(*, study: Study, count: int, criterion: str = "", at_most: int | None = None,
                          actor=None, seed: int | None = None) -> int:
    """Make ``count`` attention checks from the study's own finished outputs.

    Each shows a prompt with an answer written for another prompt.  In a study with pairs,
    beside an on-topic answer of another candidate, and the on-topic one is the known better.
    In a Likert-only study, alone, and ``criterion`` must get at most ``at_most``.  Returns
    how many were made (fewer than ``count`` when the study has too few prompts or
    candidates with outputs).
    """
    if not isinstance(count, int) or not 1 <= count <= 500:
        raise CheckError(f"count: make 1 to 500 attention checks at a time, got {count!r}")
    rng = random.Random(seed)
    rows = list(Output.objects.filter(study=study, status=Output.Status.DONE, candidate__hidden=False)
                .exclude(identity=Output.Identity.EXCLUDED).values_list("pk", "prompt_id", "candidate_id"))
    by_prompt: dict[int, list[tuple[int, int]]] = {}
    for pk, prompt_id, cand in rows:
        by_prompt.setdefault(prompt_id, []).append((pk, cand))
    if len(by_prompt) < 2:
        raise CheckError("attention checks show a prompt with another prompt's answer: the study needs "
                         "finished outputs for at least two prompts")
    likert_only = study.task_kinds == "likert"
    if likert_only:
        scales = {c["key"]: int(c["scale"]) for c in study.likert_criteria}
        if criterion not in scales:
            raise CheckError(f"criterion: name the criterion an off-topic answer must score low on "
                             f"(one of {', '.join(scales) or 'none: the study has no criteria'})")
        if not isinstance(at_most, int) or not 1 <= at_most < scales[criterion]:
            raise CheckError(f"at_most: the highest point an off-topic answer may get, from 1 to "
                             f"{scales[criterion] - 1}, got {at_most!r}")
    prompt_ids = sorted(by_prompt)
    made: list[Unit] = []
    # keyed as the database's unique constraint on units is (study, kind, output_a, output_b):
    # the same two outputs shown under the other one's prompt would be refused by it
    seen = {(kind, a, b if kind == Unit.Kind.PAIRWISE else p) for kind, p, a, b in
            gold_units(study).values_list("kind", "prompt_id", "output_a_id", "output_b_id")}
    tries = 0
    while len(made) < count and tries < count * 20:
        tries += 1
        p, q = rng.sample(prompt_ids, 2)
        off, off_cand = rng.choice(by_prompt[q])
        expected = {"kind": "attention", "note": "The answer was written for another prompt."}
        if likert_only:
            expected["ratings"] = {criterion: [1, at_most]}
            if (Unit.Kind.LIKERT, off, p) in seen:
                continue
            seen.add((Unit.Kind.LIKERT, off, p))
            made.append(Unit(study=study, kind=Unit.Kind.LIKERT, prompt_id=p, output_a_id=off, output_b_id=None,
                             cand_lo_id=off_cand, cand_hi_id=None, a_is_lo=True))
        else:
            mates = [(pk, cand) for pk, cand in by_prompt[p] if cand != off_cand]
            if not mates:
                continue
            on, on_cand = rng.choice(mates)
            lo_out, hi_out = sorted((on, off))
            if (Unit.Kind.PAIRWISE, lo_out, hi_out) in seen:
                continue
            seen.add((Unit.Kind.PAIRWISE, lo_out, hi_out))
            lo, hi = sorted((on_cand, off_cand))
            expected["better"] = "a" if lo_out == on else "b"
            made.append(Unit(study=study, kind=Unit.Kind.PAIRWISE, prompt_id=p, output_a_id=lo_out,
                             output_b_id=hi_out, cand_lo_id=lo, cand_hi_id=hi,
                             a_is_lo=(on_cand if lo_out == on else off_cand) == lo))
        made[-1].expected = expected
    for unit in made:
        unit.is_gold, unit.needed, unit.shuffle = True, 0, rng.randrange(2**31)
    with transaction.atomic():
        before = gold_units(study).count()
        Unit.objects.bulk_create(made, ignore_conflicts=True)  # the same pair twice is made once
        added = gold_units(study).count() - before
        audit.record(study, actor, audit.Action.CHECKS_ADDED, "attention checks", {"checks": added})
    return added


def check_remove(*, unit: Unit, actor=None) -> int:
    """Take a check out of the study, with the answers given to it (they were scored against
    an answer the evaluator now withdraws).  The annotators' task counters go back by the
    answers removed.  Returns how many answers went with it."""
    if not unit.is_gold:
        raise CheckError("only a check can be removed here")
    study = unit.study
    with transaction.atomic():
        per_annotator = dict(Judgment.objects.filter(unit=unit).values_list("annotator_id")
                             .annotate(n=Count("id")).values_list("annotator_id", "n"))
        for user_id, n in per_annotator.items():
            StudyMember.objects.filter(study=study, user_id=user_id).update(done=F("done") - n)
        answered = sum(per_annotator.values())
        unit.delete()
        audit.record(study, actor, audit.Action.CHECK_REMOVED, f"check {unit.pk}",
                     {"answers_removed": answered, "kind": (unit.expected or {}).get("kind", "gold")})
    return answered


# --- the qualification quiz ----------------------------------------------------------------


@dataclass(frozen=True)
class QuizState:
    """Where an annotator stands with the quiz: ``status`` is "none" (no quiz), "passed",
    "in_progress", "retry" (failed with tries left), "failed" (no tries left) or "new"."""

    status: str
    attempt: QuizAttempt | None = None
    attempts_left: int = 0


def quiz_state(*, study: Study, member: StudyMember) -> QuizState:
    if not study.quiz_size or member.qualified_at is not None:
        return QuizState("passed" if member.qualified_at else "none")
    attempts = list(QuizAttempt.objects.filter(study=study, user_id=member.user_id).order_by("-number")[:1])
    latest = attempts[0] if attempts else None
    used = latest.number if latest else 0
    left = max(0, study.quiz_attempts - used)
    if latest is not None and latest.finished_at is None:
        return QuizState("in_progress", latest, left)
    if latest is None:
        return QuizState("new", None, left)
    return QuizState("retry" if left else "failed", latest, left)


def quiz_start(*, study: Study, member: StudyMember) -> QuizAttempt:
    """Begin the next try: ``quiz_size`` gold items in a random order, sides random."""
    state = quiz_state(study=study, member=member)
    if state.status == "in_progress":
        return state.attempt
    if state.status in ("none", "passed"):
        raise CheckError("There is no quiz to take: you may start the tasks.")
    if state.status == "failed":
        raise CheckError(f"You have used all {study.quiz_attempts} tries at this study's quiz.")
    pool = list(gold_units(study, kind="gold").values_list("pk", flat=True))
    if len(pool) < study.quiz_size:
        raise CheckError("The quiz is not ready: the study has fewer gold items than the quiz asks. "
                         "Tell the study's evaluator.")
    rng = random.SystemRandom()
    items = rng.sample(pool, study.quiz_size)
    number = (state.attempt.number if state.attempt else 0) + 1
    try:
        with transaction.atomic():
            return QuizAttempt.objects.create(study=study, user_id=member.user_id, number=number, items=items,
                                              sides=[rng.random() < 0.5 for _ in items], answers=[],
                                              started_at=timezone.now())
    except Exception:  # a second tab started the same try at the same moment
        attempt = QuizAttempt.objects.filter(study=study, user_id=member.user_id, number=number).first()
        if attempt is None:
            raise
        return attempt


@dataclass(frozen=True)
class QuizItem:
    """One quiz question as the annotator sees it (no candidate, like any task)."""

    index: int
    total: int
    kind: str
    prompt_html: str
    left_html: str
    right_html: str
    criteria: tuple
    left_images: tuple = ()  # image outputs: ({url, thumb, alt},), as on a task page
    right_images: tuple = ()


def quiz_item(attempt: QuizAttempt) -> QuizItem | None:
    """The question to answer next, or None when every one is answered."""
    index = len(attempt.answers)
    if index >= len(attempt.items):
        return None
    unit = (Unit.objects.select_related("prompt", "output_a", "output_b").filter(pk=attempt.items[index]).first())
    if unit is None:  # the evaluator removed this gold item meanwhile: it counts as right
        return None
    def stored_or_render(html: str, text: str) -> str:  # rows written before HTML was stored have none
        return html or markdown.render(text)

    from .services import task_images  # services imports nothing of this module's users

    prompt_html = stored_or_render(unit.prompt.html, unit.prompt.text)
    if unit.kind == Unit.Kind.LIKERT:
        left, _ = task_images(unit.output_a, None) if not unit.output_a.text else ((), ())
        return QuizItem(index, len(attempt.items), unit.kind, prompt_html,
                        stored_or_render(unit.output_a.html, unit.output_a.text), "",
                        tuple(attempt.study.likert_criteria), left_images=left)
    first, second = (unit.output_a, unit.output_b) if attempt.sides[index] else (unit.output_b, unit.output_a)
    # as on a task page: each side's grid of the prompt's samples when the study makes several
    left, right = task_images(first, second) if not (first.text or second.text) else ((), ())
    return QuizItem(index, len(attempt.items), unit.kind, prompt_html, stored_or_render(first.html, first.text),
                    stored_or_render(second.html, second.text), (), left_images=left, right_images=right)


@dataclass(frozen=True)
class QuizFeedback:
    right: bool
    expected: str  # the known answer in screen words
    note: str
    finished: bool
    passed: bool | None
    score: int
    total: int


def quiz_answer(*, attempt: QuizAttempt, index: int, choice: str | None = None,
                ratings: dict | None = None) -> QuizFeedback:
    """Score one answer of a try; the last one decides the try (and admits the annotator)."""
    from arena import outcomes

    study = attempt.study
    with transaction.atomic():
        attempt = QuizAttempt.objects.select_for_update().get(pk=attempt.pk)
        if attempt.finished_at is not None:
            raise CheckError("This try of the quiz is over.")
        if index != len(attempt.answers):
            raise CheckError(f"question {index + 1} is not the one waiting for an answer "
                             f"(question {len(attempt.answers) + 1}); reload the page")
        unit = Unit.objects.filter(pk=attempt.items[index]).first()
        expected = unit.expected if unit is not None else None
        if expected is None:  # removed meanwhile: nobody is held to a withdrawn answer
            right, described, note, answer = True, "(this item was withdrawn)", "", None
        else:
            try:
                if unit.kind == Unit.Kind.LIKERT:
                    answer = taskconfig.ratings_validate(study.likert_criteria, ratings)
                    right = gold.answer_right(expected, ratings=answer)
                else:
                    answer = choice or ""
                    outcome = outcomes.STORED[outcomes.from_choice(answer, attempt.sides[index])]
                    right = gold.answer_right(expected, outcome=outcome)
            except ValueError as exc:
                raise CheckError(str(exc)) from None
            described = gold.describe(expected, left_is_a=attempt.sides[index], criteria=study.likert_criteria)
            note = expected.get("note", "")
        attempt.answers = [*attempt.answers, {"answer": answer, "right": right}]
        score = sum(1 for a in attempt.answers if a["right"])
        finished = len(attempt.answers) == len(attempt.items)
        passed = None
        if finished:
            passed = score * 100 >= study.quiz_pass * len(attempt.items)
            attempt.finished_at, attempt.passed = timezone.now(), passed
            if passed:
                StudyMember.objects.filter(study=study, user_id=attempt.user_id).update(qualified_at=timezone.now())
        attempt.save(update_fields=["answers", "finished_at", "passed"])
    return QuizFeedback(right, described, note, finished, passed, score, len(attempt.items))


# --- reads ----------------------------------------------------------------------------------


def check_accuracy(study: Study) -> dict[int, tuple[int, int]]:
    """Per annotator: (checks answered right, checks answered), from their judgments on checks."""
    expected = dict(gold_units(study).exclude(expected=None).values_list("pk", "expected"))
    scores: dict[int, tuple[int, int]] = {}
    if not expected:
        return scores
    for user_id, unit_id, outcome, ratings in (Judgment.objects.filter(study=study, unit__is_gold=True)
                                               .values_list("annotator_id", "unit_id", "outcome", "ratings")
                                               .iterator(chunk_size=5000)):
        if unit_id not in expected:  # marked as a check without a known answer: nothing to score
            continue
        right, answered = scores.get(user_id, (0, 0))
        ok = gold.answer_right(expected[unit_id], outcome=outcome, ratings=ratings)
        scores[user_id] = (right + ok, answered + 1)
    return scores


@dataclass(frozen=True)
class CheckRow:
    unit_id: int
    kind: str
    task: str
    prompt: str
    what: str  # the known answer in the evaluator's words (candidate names: evaluators only)
    note: str
    answered: int
    right: int


def checks_list(study: Study) -> list[CheckRow]:
    """The study's checks with how often each was answered, and answered right."""
    units = list(gold_units(study).select_related("prompt", "cand_lo", "cand_hi", "output_a__prompt")
                 .order_by("pk"))
    answers: dict[int, list[int]] = {}
    expected = {u.pk: u.expected or {} for u in units}
    for unit_id, outcome, ratings in Judgment.objects.filter(unit__in=[u.pk for u in units]).values_list(
            "unit_id", "outcome", "ratings"):
        tally = answers.setdefault(unit_id, [0, 0])
        tally[0] += 1
        tally[1] += gold.answer_right(expected[unit_id], outcome=outcome, ratings=ratings)
    rows = []
    names = {c["key"]: c["name"] for c in study.likert_criteria}
    for u in units:
        exp = expected[u.pk]
        if "better" in exp:
            a_name = (u.cand_lo if u.a_is_lo else u.cand_hi).name
            b_name = (u.cand_hi if u.a_is_lo else u.cand_lo).name
            if exp.get("kind") == "attention":
                on, off = (a_name, b_name) if exp["better"] == "a" else (b_name, a_name)
                what = f"{on}'s answer beats {off}'s answer to another prompt"
            else:
                what = {"a": f"{a_name} better than {b_name}", "b": f"{b_name} better than {a_name}",
                        "tie": f"{a_name} and {b_name} tie"}[exp["better"]]
            task = "pair"
        else:
            spans = ", ".join(f"{names.get(k, k)} {lo}" + (f"-{hi}" if hi != lo else "")
                              for k, (lo, hi) in exp.get("ratings", {}).items())
            source = "" if u.output_a.prompt_id == u.prompt_id else f" (answer to {u.output_a.prompt.external_id})"
            what = f"{u.cand_lo.name}{source}: {spans}"
            task = "rating"
        n, right = answers.get(u.pk, (0, 0))
        rows.append(CheckRow(u.pk, exp.get("kind", "gold"), task, u.prompt.external_id, what, exp.get("note", ""),
                             n, right))
    return rows


def count_by_kind(study: Study) -> dict[str, int]:
    return dict(gold_units(study).values_list("expected__kind").annotate(n=Count("id"))
                .values_list("expected__kind", "n"))


__all__ = ["CheckError", "QuizFeedback", "QuizItem", "QuizState", "check_accuracy", "check_remove",
           "checks_import", "checks_list", "checks_make_attention", "checks_settings_update", "count_by_kind",
           "gold_units", "quiz_answer", "quiz_item", "quiz_start", "quiz_state"]
