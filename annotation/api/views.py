"""REST endpoints of the annotation app (routed under ``/api/`` by evalsite/api_urls.py).

Thin, like the pages: check the request's shape with a serializer, fetch through ``access``
(404 for what the caller may not know exists, 403 for a role they lack), call the same service
the page calls, and answer.  The annotator's endpoints carry the assignment token and the texts
only: nothing that names or numbers a candidate or an output.
"""
from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.core.paginator import InvalidPage, Paginator
from django.http import StreamingHttpResponse
from django.urls import reverse
from django.utils.decorators import method_decorator
from django.views.decorators.cache import never_cache
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.decorators import api_view
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.pagination import CursorPagination
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from arena import outcomes

from .. import access, audit, exchange, selectors, services
from ..forms import upload_size_error
from ..models import Candidate, Output, StudyMember
from ..uploads import UploadError
from . import selectors as api_selectors
from . import serializers as s

Role = StudyMember.Role
_ROLE_ORDER = (Role.EVALUATOR, Role.MANAGER, Role.ANNOTATOR)


def _main_role(roles) -> str:
    return next(r for r in _ROLE_ORDER if r in roles)


# --- studies ---------------------------------------------------------------------------------


def _summary(request: Request, study, roles) -> dict:
    return {
        "id": study.pk, "name": study.name, "description": study.description, "created_at": study.created_at,
        "role": _main_role(roles), "roles": [r for r in _ROLE_ORDER if r in roles],
        "url": request.build_absolute_uri(reverse("api-study", args=[study.pk])),
    }


class StudyListApi(APIView):
    @extend_schema(summary="The caller's studies", responses=s.StudySummarySerializer(many=True), tags=["studies"])
    def get(self, request: Request) -> Response:
        """Every study the caller belongs to, newest first, with the caller's role in it."""
        studies = access.studies_for_user(request.user)
        return Response(s.StudySummarySerializer([_summary(request, st, roles) for st, roles in studies],
                                                 many=True).data)


class StudyDetailApi(APIView):
    @extend_schema(summary="One study", responses=s.StudyDetailSerializer, tags=["studies"])
    def get(self, request: Request, study_id: int) -> Response:
        """A study as the caller's role sees it: annotators get their progress and no candidate
        names; evaluators and managers get the candidates and counts."""
        try:
            study = access.get_study_for_manager(request.user, study_id)
        except PermissionDenied:  # a member in another role: an annotator (or refused as one)
            member = access.get_member_for_annotator(request.user, study_id)
            return Response(s.StudyDetailSerializer(_annotator_detail(request, member)).data)
        roles = access.study_roles(request.user, study)
        data = {
            **_summary(request, study, roles),
            "overlap": study.overlap, "units_total": study.units_total,
            "samples_per_prompt": study.samples_per_prompt, "adaptive_sampling": study.adaptive_sampling,
            "prompts": study.prompts.count(), "judgments": study.judgments.count(),
            "candidates": [{"name": c.name, "backend": c.backend, "hidden": c.hidden}
                           for c in Candidate.objects.filter(study=study).order_by("name")],
            "links": {name: request.build_absolute_uri(reverse(f"api-{name}", args=[study.pk]))
                      for name in ("leaderboard", "judgments", "progress", "outputs", "audit")
                      if name in ("leaderboard", "judgments") or Role.EVALUATOR in roles},
        }
        return Response(s.StudyDetailSerializer(data).data)


def _annotator_detail(request: Request, member) -> dict:
    study = member.study
    return {
        **_summary(request, study, {member.role}),
        "overlap": study.overlap, "units_total": study.units_total,
        "done": member.done, "remaining": max(0, study.units_total - member.done),
        "tasks_url": request.build_absolute_uri(reverse("api-task-next", args=[study.pk])),
    }


# --- the annotator's tasks -------------------------------------------------------------------


def _task(study, assignment, *, done: int, request) -> dict:
    """The task payload; with no task, the same shape with ``token`` null and ``state`` saying why."""
    if assignment is None:
        waiting = selectors.generation_pending(study.pk)
        return {
            "state": "waiting" if waiting else "finished",
            "detail": ("No pair is ready yet: outputs are still being generated. Ask again in a while."
                       if waiting else f"Nothing left for you in this study: you have judged {done}. Thank you."),
            "token": None, "kind": None, "prompt": None, "outputs": [], "criteria": [], "tags": [],
            "done": done, "remaining": 0,
        }
    view = services.task_view(assignment=assignment, done=done, units_total=study.units_total, study=study)
    tags = [{"key": t["key"], "label": t["label"]} for t in view.tags]
    common = {"state": "open", "token": view.token, "kind": view.kind, "prompt": view.prompt, "tags": tags,
              "done": view.done, "remaining": view.remaining}
    reason = " Send a rationale: this study requires one." if view.ask_rationale == "required" else ""
    def output(label: str, text: str, images) -> dict:  # an image output carries its images' URLs
        if not images:
            return {"label": label, "text": text}
        return {"label": label, "text": text, "images": [
            {**i, "url": request.build_absolute_uri(i["url"]), "thumb": request.build_absolute_uri(i["thumb"])}
            for i in images]}

    if view.kind == "likert":
        return {**common, "detail": "One output to rate on each criterion." + reason,
                "outputs": [output("A", view.left, view.left_images)], "criteria": list(view.criteria)}
    return {**common, "detail": "A pair to judge: which output answers the prompt better?" + reason,
            "outputs": [output("A", view.left, view.left_images), output("B", view.right, view.right_images)],
            "criteria": []}


@method_decorator(never_cache, name="dispatch")
class TaskNextApi(APIView):
    @extend_schema(
        summary="The next task", tags=["annotation"], responses=s.TaskSerializer,
        description=(
            "The task the annotator holds, or a new one (a lease of `EVALSITE_LEASE_MINUTES`). Asking again "
            "returns the same task until it is judged. When there is none the answer is still 200 with "
            "`token: null` and `state` `finished` (nothing left), `waiting` (outputs still being generated) or "
            "`quiz` (the study's qualification quiz comes first; `detail` gives its page)."),
    )
    def get(self, request: Request, study_id: int) -> Response:
        member = access.get_member_for_annotator(request.user, study_id)
        if member.done == 0 and member.study.quiz_size and member.qualified_at is None:
            url = request.build_absolute_uri(reverse("annotation:quiz", args=[study_id]))
            return Response(s.TaskSerializer({
                "state": "quiz", "detail": f"Pass the study's qualification quiz before a first task: {url}",
                "token": None, "kind": None, "prompt": None, "outputs": [], "criteria": [], "tags": [],
                "done": member.done, "remaining": 0}).data)
        assignment = services.assignment_next(study=member.study, annotator=request.user, promote=False)
        return Response(s.TaskSerializer(_task(member.study, assignment, done=member.done, request=request)).data)


def _choice(outcome: str, left_is_a: bool) -> str:
    """The screen side an outcome stands for, given which output was on the left."""
    code = outcomes.STORED_CODE[outcome]
    if code in (outcomes.TIE, outcomes.BOTH_BAD):
        return outcomes.CHOICES[code]
    return "left" if (code == outcomes.A) == left_is_a else "right"


@method_decorator(never_cache, name="dispatch")
class JudgmentSubmitApi(APIView):
    @extend_schema(
        summary="Judge a task", tags=["annotation"], request=s.JudgmentInputSerializer,
        responses={
            201: s.JudgmentSubmitResponseSerializer,
            200: OpenApiResponse(s.JudgmentSubmitResponseSerializer,
                                 description="The same verdict again: nothing changed (idempotent)."),
            400: OpenApiResponse(description="A field is missing or out of range; the body names it."),
            404: OpenApiResponse(description="No such task for you (someone else's token, or none)."),
            409: OpenApiResponse(s.RefusalSerializer, description=(
                "code `already_submitted`: judged already with another verdict; `lease_expired`: the lease "
                "expired and its place went to someone else.")),
        },
        examples=[OpenApiExample("left is better", value={"choice": "left", "rationale": "Clearer.",
                                                           "active_ms": 5300}, request_only=True)],
    )
    def post(self, request: Request, token: str) -> Response:
        """Record the verdict on a task and answer with the next task, in one round trip."""
        assignment = access.get_assignment_for_annotator(request.user, token)
        study, done = assignment.study, assignment.member_done
        data = s.JudgmentInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            judgment, created = services.judgment_submit(assignment=assignment, **data.validated_data)
        except services.AlreadySubmitted as exc:
            return Response({"detail": str(exc), "code": "already_submitted"}, status=status.HTTP_409_CONFLICT)
        except services.LeaseExpired as exc:
            return Response({"detail": str(exc), "code": "lease_expired"}, status=status.HTTP_409_CONFLICT)
        except services.ServiceError as exc:  # AnswerInvalid: the message starts with the field it names
            field, _, _ = str(exc).partition(":")
            field = field if field in ("choice", "ratings", "tags", "rationale") else "choice"
            raise ValidationError({field: [str(exc)]}) from None
        done += created
        # the lease just closed was the annotator's only open one, unless this was a repeat
        nxt = services.assignment_next(study=study, annotator=request.user, check_held=not created,
                                       promote=False)
        body = {
            "created": created,
            "judgment": {"token": token, "ratings": judgment.ratings, "tags": judgment.tags or [],
                         "choice": _choice(judgment.outcome, assignment.left_is_a) if judgment.outcome else None,
                         "rationale": judgment.rationale, "active_ms": judgment.active_ms,
                         "submitted_at": judgment.submitted_at},
            "next": _task(study, nxt, done=done, request=request),
        }
        return Response(s.JudgmentSubmitResponseSerializer(body).data,
                        status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


@method_decorator(never_cache, name="dispatch")
class TaskSkipApi(APIView):
    @extend_schema(
        summary="Skip a task", tags=["annotation"], request=s.SkipInputSerializer,
        responses={
            201: s.SkipResponseSerializer,
            200: OpenApiResponse(s.SkipResponseSerializer,
                                 description="Skipped already: nothing changed (idempotent)."),
            400: OpenApiResponse(description="reason or note is missing or wrong; the body names it."),
            404: OpenApiResponse(description="No such task for you (someone else's token, or none)."),
            409: OpenApiResponse(s.RefusalSerializer, description="code `already_submitted`: the task was judged."),
        },
        examples=[OpenApiExample("garbled", value={"reason": "other", "note": "The output is cut off."},
                                 request_only=True)],
        description=(
            "Pass on the task with a reason: its place goes to someone else and it is not served to you again. "
            "Answers with the next task (or `token: null` and the state), like `tasks/next`."),
    )
    def post(self, request: Request, token: str) -> Response:
        """Record the skip and answer with the next task, in one round trip."""
        assignment = access.get_assignment_for_annotator(request.user, token)
        study, done = assignment.study, assignment.member_done
        data = s.SkipInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            created = services.task_skip(assignment=assignment, **data.validated_data)
        except services.AnswerInvalid as exc:  # the message starts with the field it names
            field, _, _ = str(exc).partition(":")
            raise ValidationError({field if field in ("reason", "note") else "reason": [str(exc)]}) from None
        except services.ServiceError as exc:
            return Response({"detail": str(exc), "code": "already_submitted"}, status=status.HTTP_409_CONFLICT)
        nxt = services.assignment_next(study=study, annotator=request.user, check_held=not created,
                                       promote=False)
        return Response(s.SkipResponseSerializer({"created": created,
                                                  "next": _task(study, nxt, done=done, request=request)}).data,
                        status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


@method_decorator(never_cache, name="dispatch")
class JudgmentUndoApi(APIView):
    @extend_schema(
        summary="Undo a judgment", tags=["annotation"], request=None,
        responses={
            200: OpenApiResponse(s.TaskSerializer, description="The task reopened, to judge again."),
            404: OpenApiResponse(description="No such task for you (someone else's token, or none)."),
            409: OpenApiResponse(s.RefusalSerializer, description=(
                "code `undo_refused`: not your latest judgment, past `EVALSITE_UNDO_SECONDS`, or nothing to "
                "undo; `detail` says which.")),
        },
        description=(
            "Take back your latest judgment, on the task of this token, within `EVALSITE_UNDO_SECONDS` of it. "
            "The task opens again for you (the task you were given next is released) and comes back."),
    )
    def post(self, request: Request, token: str) -> Response:
        """Delete the latest judgment and answer with its task, open again."""
        assignment = access.get_assignment_for_annotator(request.user, token)
        study, done = assignment.study, assignment.member_done
        try:
            reopened = services.judgment_undo(assignment=assignment)
        except services.ServiceError as exc:
            return Response({"detail": str(exc), "code": "undo_refused"}, status=status.HTTP_409_CONFLICT)
        return Response(s.TaskSerializer(_task(study, reopened, done=max(0, done - 1), request=request)).data)


# --- the evaluator's outputs ----------------------------------------------------------------


class OutputCursor(CursorPagination):
    """Pages in id order: each page costs the same however deep it is."""

    ordering = "id"
    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = 1000

    def decode_cursor(self, request):
        cursor = super().decode_cursor(request)
        if cursor is not None and cursor.position is not None and not str(cursor.position).isdigit():
            raise NotFound(self.invalid_cursor_message)
        return cursor


class OutputListApi(APIView):
    pagination_class = OutputCursor

    @extend_schema(summary="The study's outputs", tags=["outputs"], parameters=[s.OutputQuerySerializer],
                   responses=s.OutputSerializer(many=True))
    def get(self, request: Request, study_id: int) -> Response:
        """Every output with its prompt id, candidate, sample, text, status, latency, tokens and cost;
        100 a page (``page_size`` up to 1000), in id order, with ``next`` and ``previous`` links."""
        study = access.get_study_for_evaluator(request.user, study_id)
        query = s.OutputQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        outputs = Output.objects.filter(study=study)
        if "candidate" in query.validated_data:
            name = query.validated_data["candidate"]
            if not Candidate.objects.filter(study=study, name=name).exists():
                raise ValidationError({"candidate": [f"there is no candidate named {name!r} in this study"]})
            outputs = outputs.filter(candidate__name=name)
        if "status" in query.validated_data:
            outputs = outputs.filter(status=query.validated_data["status"])
        rows = outputs.values("id", "sample_index", "status", "text", "error", "latency_ms", "prompt_tokens",
                              "completion_tokens", "cost", "finished_at", "prompt__external_id", "candidate__name")
        paginator = self.pagination_class()
        page = [{**row, "prompt_id": row["prompt__external_id"], "candidate": row["candidate__name"]}
                for row in paginator.paginate_queryset(rows, request, view=self)]
        return paginator.get_paginated_response(s.OutputSerializer(page, many=True).data)


# --- judgments out and in --------------------------------------------------------------------


class _StreamNegotiation(BaseContentNegotiation):
    """The export's ``format`` parameter picks the file format, not a DRF renderer: errors are JSON."""

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type

    def select_parser(self, request, parsers):
        return None


_EXPORT_TYPES = {"csv": "text/csv; charset=utf-8", "jsonl": "application/jsonl; charset=utf-8"}


class JudgmentExportApi(APIView):
    content_negotiation_class = _StreamNegotiation

    @extend_schema(
        summary="Export the study's judgments", tags=["judgments"], parameters=[s.ExportQuerySerializer],
        responses={(200, "text/csv"): OpenApiTypes.STR, (200, "application/jsonl"): OpenApiTypes.STR},
        description=(
            "One row per judgment, pairwise and Likert, streamed: kind (pairwise, likert), prompt_id, sample_index, "
            "model_a (a Likert row: the rated output's candidate), model_b, shown_left, outcome (a, b, tie, "
            "both_bad), winner (Chatbot Arena's model_a, model_b, tie, tie (bothbad)), ratings (JSON Lines: "
            "{criterion key: point, or null for not applicable}; CSV: one column `rating:<key>` per criterion "
            "holding the point, `na` for not applicable, or nothing), tags (JSON Lines: a list of failure-tag "
            "keys; CSV: keys joined by `;`), rationale, served_at, submitted_at, active_ms, annotator, excluded. "
            "The same columns import elsewhere."),
    )
    def get(self, request: Request, study_id: int) -> StreamingHttpResponse:
        study = access.get_study_for_manager(request.user, study_id)
        query = s.ExportQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        fmt = query.validated_data["format"]
        rows = api_selectors.judgment_rows(study, pseudonymize=query.validated_data["pseudonymize"])
        lines = (exchange.csv_lines(rows, api_selectors.rating_keys(study)) if fmt == "csv"
                 else exchange.jsonl_lines(rows))
        response = StreamingHttpResponse((line.encode() for line in lines), content_type=_EXPORT_TYPES[fmt])
        response["Content-Disposition"] = f'attachment; filename="study-{study.pk}-judgments.{fmt}"'
        response["Cache-Control"] = "no-store"
        return response


class JudgmentImportApi(APIView):
    parser_classes = [MultiPartParser]

    @extend_schema(
        summary="Import judgments", tags=["judgments"], request={"multipart/form-data": s.ImportInputSerializer},
        responses={201: s.ImportResultSerializer,
                   400: OpenApiResponse(s.UploadErrorSerializer, description=(
                       "The file was refused; every error names its line and field, and nothing was written."))},
        description=(
            "Judgments collected elsewhere, or exported from another study with the same prompts and "
            "candidates, in the export's columns (CSV or JSON Lines), pairwise verdicts and Likert ratings alike. "
            "Validated whole: ratings against this study's criteria, tags against its failure tags; each "
            "annotator must be an annotator member of this study. Imported judgments count in ratings like "
            "those cast here."),
    )
    def post(self, request: Request, study_id: int) -> Response:
        study = access.get_study_for_evaluator(request.user, study_id)
        data = s.ImportInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        upload = data.validated_data["file"]
        too_big = upload_size_error(upload)
        try:
            if too_big:
                raise UploadError(too_big)
            imported = services.judgments_import(study=study, data=upload, filename=upload.name,
                                                 actor=request.user)
        except UploadError as exc:
            return Response({
                "detail": f"The file was refused ({exc.total} error{'s' if exc.total != 1 else ''}); nothing was "
                          "imported.",
                "errors": [{"line": e.line, "index": e.index, "field": e.field, "message": e.message}
                           for e in exc.errors],
                "total": exc.total,
            }, status=status.HTTP_400_BAD_REQUEST)
        except services.ServiceError as exc:
            return Response({"detail": str(exc), "code": "conflict"}, status=status.HTTP_409_CONFLICT)
        return Response({"study": study.pk, "imported": imported}, status=status.HTTP_201_CREATED)


# --- the audit log ---------------------------------------------------------------------------


@extend_schema(summary="The study's audit log", tags=["studies"], responses=s.AuditPageSerializer,
               parameters=[OpenApiParameter("page", int, description="1-based; 50 entries a page.")])
@api_view(["GET"])
def audit_log(request: Request, study_id: int) -> Response:
    """``GET /api/studies/<id>/audit?page=N``: the study's audit entries, newest first, 50 a page."""
    study = access.get_study_for_evaluator(request.user, study_id)
    paginator = Paginator(audit.entries(study), audit.PAGE_SIZE)
    try:
        page = paginator.page(request.query_params.get("page", 1))
    except InvalidPage as exc:
        raise ValidationError({"page": f"{exc} (pages: 1 to {paginator.num_pages})"}) from None
    return Response({
        "study": study.pk,
        "count": paginator.count,
        "page": page.number,
        "pages": paginator.num_pages,
        "entries": [
            {"id": e.pk, "at": e.at, "actor": e.actor_name, "actor_id": e.actor_id, "action": e.action,
             "action_label": e.get_action_display(), "target": e.target, "detail": e.detail}
            for e in page
        ],
    })
