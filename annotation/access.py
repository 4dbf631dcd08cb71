"""The one place that decides who may see or change what in a study.

Every view and API endpoint fetches study objects through these helpers; they raise
``Http404`` for objects the user may not know exist and ``PermissionDenied`` for a
study the user belongs to but in another role.
"""
from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied
import json
from datetime import datetime
from datetime import timezone as dt_timezone

from django.db import connection
from django.http import Http404
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from .models import Assignment, Study, StudyMember, Unit

Role = StudyMember.Role


def study_roles(user: AbstractBaseUser, study: Study) -> set[str]:
    """The user's roles in the study: membership is the only source, whoever created it
    (``services.study_create`` makes the creator an evaluator member). Superusers are
    evaluators of every study; ``is_staff`` grants nothing here."""
    if not user.is_authenticated:
        return set()
    roles = set(
        StudyMember.objects.filter(study=study, user=user).values_list("role", flat=True)
    )
    if user.is_superuser:
        roles.add(Role.EVALUATOR)
    return roles


def _get_study(user: AbstractBaseUser, study_id: int, allowed: set[str]) -> Study:
    try:
        study = Study.objects.get(pk=study_id)
    except Study.DoesNotExist:
        raise Http404(f"No study with id {study_id}") from None
    roles = study_roles(user, study)
    if not roles:
        raise Http404(f"No study with id {study_id}")
    if not roles & allowed:
        raise PermissionDenied(f"This page needs one of: {', '.join(sorted(allowed))}")
    study.viewer_roles = roles  # what the page may offer this user, without asking again
    return study


def get_study_for_evaluator(user: AbstractBaseUser, study_id: int) -> Study:
    return _get_study(user, study_id, {Role.EVALUATOR})


def get_study_for_manager(user: AbstractBaseUser, study_id: int) -> Study:
    """Managers read dashboards; evaluators who own the study may read them too."""
    return _get_study(user, study_id, {Role.MANAGER, Role.EVALUATOR})


def _check_annotator(role: str, excluded: bool) -> None:
    if role != Role.ANNOTATOR:
        raise PermissionDenied(f"This page needs one of: {Role.ANNOTATOR}")
    if excluded:
        raise PermissionDenied("You have been excluded from this study.")


def get_member_for_annotator(user: AbstractBaseUser, study_id: int) -> StudyMember:
    """The annotator's membership with its study, in one query (it carries the progress counter)."""
    member = (
        StudyMember.objects.select_related("study").filter(study_id=study_id, user_id=user.pk).first()
        if user.is_authenticated else None
    )
    if member is None:
        _get_study(user, study_id, {Role.ANNOTATOR})  # 404 for strangers, 403 for the study's owner
        raise Http404(f"No study with id {study_id}")
    _check_annotator(member.role, member.excluded)
    return member


_ASSIGNMENT_SQL = f"""
SELECT a.id, a.study_id, a.unit_id, a.left_is_a, s.name, s.units_total, s.overlap, s.adaptive_sampling,
       s.lease_sweep_at, m.role, m.excluded, m.done, u.kind, s.likert_criteria, s.failure_tags, s.ask_rationale
FROM {Assignment._meta.db_table} a
JOIN {Study._meta.db_table} s ON s.id = a.study_id
JOIN {Unit._meta.db_table} u ON u.id = a.unit_id
LEFT JOIN {StudyMember._meta.db_table} m ON m.study_id = a.study_id AND m.user_id = a.annotator_id
WHERE a.token = %s AND a.annotator_id = %s"""


def get_assignment_for_annotator(user: AbstractBaseUser, token: str) -> Assignment:
    """An assignment is reachable only by its token and only by the annotator holding it.

    One query on the vote path: the assignment, its study (``assignment.study``) and the
    annotator's membership (``member_role``, ``member_excluded``, ``member_done``).
    """
    row = None
    if user.is_authenticated:
        with connection.cursor() as cur:
            cur.execute(_ASSIGNMENT_SQL, [token, user.pk])
            row = cur.fetchone()
    if row is None:
        raise Http404("No such task for you: the link is wrong or belongs to someone else.")
    (pk, study_id, unit_id, left_is_a, name, units_total, overlap, adaptive, sweep_at, role, excluded, done, kind,
     criteria, tags, ask_rationale) = row
    _check_annotator(role, bool(excluded))
    assignment = Assignment(id=pk, study_id=study_id, unit_id=unit_id, annotator_id=user.pk, token=token,
                            left_is_a=bool(left_is_a))
    assignment.study = Study(id=study_id, name=name, units_total=units_total, overlap=overlap,
                             adaptive_sampling=bool(adaptive), lease_sweep_at=_datetime(sweep_at),
                             likert_criteria=_json(criteria), failure_tags=_json(tags), ask_rationale=ask_rationale)
    assignment.member_done = done
    assignment.unit_kind = kind
    return assignment


def _json(value):
    """A JSON column read by a raw query (SQLite gives text, PostgreSQL the decoded value)."""
    return json.loads(value) if isinstance(value, str) else value


def _datetime(value):
    """A datetime column read by a raw query (SQLite gives text, PostgreSQL a datetime)."""
    if value is None:
        return None
    parsed = value if isinstance(value, datetime) else parse_datetime(value)
    return parsed if timezone.is_aware(parsed) else timezone.make_aware(parsed, dt_timezone.utc)


def studies_for_user(user: AbstractBaseUser):
    """Studies the user belongs to, each with the user's roles."""
    if not user.is_authenticated:
        return []
    qs = Study.objects.all() if user.is_superuser else Study.objects.filter(
        pk__in=StudyMember.objects.filter(user=user).values("study")
    )
    return [(study, study_roles(user, study)) for study in qs.order_by("-created_at")]


def get_output_image_for_user(user: AbstractBaseUser, study_id: int, path: str, *, thumbnail: bool = False):
    """The output whose image (or thumbnail) is stored at ``path``, if the user may see it; else 404.

    Evaluators and managers of the study see every image of it; an annotator only the images of
    the tasks leased to them or judged by them (both outputs of a pair, with the other samples of
    the same prompt and candidate that a pair's grid shows; a Likert task's one output), gold
    items and attention checks included, and the quiz questions they have reached).  Everyone
    else gets a 404, as for a study they do not know.  Indexed queries, whatever the study's size:
    two for evaluators and managers, three for an annotator's task, two more for a quiz question.
    """
    from django.db.models import Q

    from .models import Output

    if not user.is_authenticated:
        raise Http404("No such image")
    roles = {role for role, excluded in StudyMember.objects.filter(study_id=study_id, user_id=user.pk)
             .values_list("role", "excluded") if not (role == Role.ANNOTATOR and excluded)}
    if user.is_superuser:
        roles.add(Role.EVALUATOR)
    if not roles:
        raise Http404("No such image")
    field = "thumbnail" if thumbnail else "image"
    output = Output.objects.filter(study_id=study_id, **{field: path}).only(
        "pk", "study_id", "prompt_id", "candidate_id", field).first()
    if output is None:
        raise Http404("No such image")
    if roles & {Role.EVALUATOR, Role.MANAGER}:
        return output
    same_sample = Q(unit__output_a_id=output.pk) | Q(unit__output_b_id=output.pk)
    grid = Q(unit__kind=Unit.Kind.PAIRWISE) & (
        Q(unit__output_a__prompt_id=output.prompt_id, unit__output_a__candidate_id=output.candidate_id)
        | Q(unit__output_b__prompt_id=output.prompt_id, unit__output_b__candidate_id=output.candidate_id))
    held_or_judged = Q(submitted_at__isnull=False) | Q(released=False)
    if Assignment.objects.filter(held_or_judged, same_sample | grid, study_id=study_id,
                                 annotator_id=user.pk).exists():
        return output
    if _in_quiz_shown(user, study_id, output):
        return output
    raise Http404("No such image")


def _in_quiz_shown(user: AbstractBaseUser, study_id: int, output) -> bool:
    """Whether a quiz question the annotator has reached (answered, or the one waiting) shows the
    output, a pair's grid of samples included as on a task: quiz questions are gold items asked
    outside any lease (annotation.checks)."""
    from django.db.models import Q

    from .models import QuizAttempt

    reached = [pk for items, answers in QuizAttempt.objects.filter(study_id=study_id, user_id=user.pk)
               .values_list("items", "answers") for pk in items[:len(answers) + 1]]
    shown = Q(output_a_id=output.pk) | Q(output_b_id=output.pk) | (Q(kind=Unit.Kind.PAIRWISE) & (
        Q(output_a__prompt_id=output.prompt_id, output_a__candidate_id=output.candidate_id)
        | Q(output_b__prompt_id=output.prompt_id, output_b__candidate_id=output.candidate_id)))
    return bool(reached) and Unit.objects.filter(shown, pk__in=reached, study_id=study_id).exists()
