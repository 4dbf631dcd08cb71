"""The one place that decides who may see or change what in a study.

Every view and API endpoint fetches study objects through these helpers; they raise
``Http404`` for objects the user may not know exist and ``PermissionDenied`` for a
study the user belongs to but in another role.
"""
from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied
from django.db.models import F, FilteredRelation, Q
from django.http import Http404

from .models import Assignment, Study, StudyMember

Role = StudyMember.Role


def study_roles(user: AbstractBaseUser, study: Study) -> set[str]:
    if not user.is_authenticated:
        return set()
    roles = set(
        StudyMember.objects.filter(study=study, user=user).values_list("role", flat=True)
    )
    if study.created_by_id == user.pk or user.is_superuser:
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
    return study


def get_study_for_evaluator(user: AbstractBaseUser, study_id: int) -> Study:
    return _get_study(user, study_id, {Role.EVALUATOR})


def get_study_for_manager(user: AbstractBaseUser, study_id: int) -> Study:
    """Managers read dashboards; evaluators who own the study may read them too."""
    return _get_study(user, study_id, {Role.MANAGER, Role.EVALUATOR})


def get_study_for_annotator(user: AbstractBaseUser, study_id: int) -> Study:
    return get_member_for_annotator(user, study_id).study


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


def get_assignment_for_annotator(user: AbstractBaseUser, token: str) -> Assignment:
    """An assignment is reachable only by its token and only by the annotator holding it.

    One query: the assignment, its study and the annotator's membership (role,
    exclusion, ``done`` counter, as ``member_*`` attributes).
    """
    assignment = (
        Assignment.objects.select_related("study")
        .annotate(me=FilteredRelation("study__members", condition=Q(study__members__user_id=user.pk)))
        .annotate(member_role=F("me__role"), member_excluded=F("me__excluded"), member_done=F("me__done"))
        .filter(token=token, annotator_id=user.pk)
        .first()
    ) if user.is_authenticated else None
    if assignment is None:
        raise Http404("No such task for you: the link is wrong or belongs to someone else.")
    _check_annotator(assignment.member_role, assignment.member_excluded)
    return assignment


def studies_for_user(user: AbstractBaseUser):
    """Studies the user belongs to, each with the user's roles."""
    if not user.is_authenticated:
        return []
    qs = Study.objects.all() if user.is_superuser else Study.objects.filter(
        pk__in=StudyMember.objects.filter(user=user).values("study")
    ) | Study.objects.filter(created_by=user)
    return [(study, study_roles(user, study)) for study in qs.distinct().order_by("-created_at")]
