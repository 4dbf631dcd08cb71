"""Turn a study's judgments into the plain battle counts that arena.ratings takes."""
from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Count, Max

from annotation.models import Candidate, Judgment, StudyMember

# Judgment outcomes (in terms of unit.output_a / output_b) in Chatbot Arena's words.
OUTCOME_NAMES = {
    Judgment.Outcome.A: "model_a",
    Judgment.Outcome.B: "model_b",
    Judgment.Outcome.TIE: "tie",
    Judgment.Outcome.BOTH_BAD: "tie (bothbad)",
}


@dataclass(frozen=True)
class BattleCells:
    """Aggregated battles: one row per (candidate a, candidate b, outcome) with a count."""

    models: list[str]
    a: list[int]
    b: list[int]
    outcome: list[str]
    count: list[int]
    n_judgments: int
    last_judgment_id: int


def study_judgments(study_id: int):
    excluded = StudyMember.objects.filter(study_id=study_id, excluded=True).values("user")
    return Judgment.objects.filter(study_id=study_id).exclude(annotator__in=excluded)


def battle_cells(study_id: int) -> BattleCells:
    """Count judgments per candidate pair and outcome with one SQL GROUP BY."""
    judgments = study_judgments(study_id)
    rows = (
        judgments.values_list("unit__output_a__candidate_id", "unit__output_b__candidate_id", "outcome")
        .annotate(n=Count("id"))
        .order_by()
    )
    rows = list(rows)
    stats = judgments.aggregate(n=Count("id"), last=Max("id"))
    names = dict(Candidate.objects.filter(study_id=study_id).values_list("pk", "name"))
    models = sorted(names.values())
    index = {pk: models.index(name) for pk, name in names.items()}
    return BattleCells(
        models=models,
        a=[index[r[0]] for r in rows],
        b=[index[r[1]] for r in rows],
        outcome=[OUTCOME_NAMES[r[2]] for r in rows],
        count=[r[3] for r in rows],
        n_judgments=stats["n"] or 0,
        last_judgment_id=stats["last"] or 0,
    )


def latest_judgment_id(study_id: int) -> int:
    return study_judgments(study_id).aggregate(last=Max("id"))["last"] or 0
