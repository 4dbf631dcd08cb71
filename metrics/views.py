"""The metric runs page of a study: start a metric, watch its progress, read its table."""
from __future__ import annotations

import csv

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST
from django_htmx.http import HttpResponseStopPolling

from annotation import access
from annotation.exchange import csv_cell
from annotation.services import ServiceError

from . import selectors, services, summary
from .forms import MetricRunForm, SummaryBudgetForm
from .models import MetricRun


def _page(request: HttpRequest, study, form=None, error: str = "", status: int = 200) -> HttpResponse:
    slice_key = request.GET.get("slice", "all")
    ctx = {"study": study, "form": form or MetricRunForm(),
           "evaluator": access.Role.EVALUATOR in access.study_roles(request.user, study), "error": error,
           **selectors.metric_runs_table(study, slice_key)}
    retryable = services.metric_runs_retryable(study)
    for run in ctx["runs"]:
        run.retryable = run.pk in retryable
        run.skipped_reason = services.skipped_reason(run.metric, run.options)
    if request.htmx and request.method == "GET":
        response = render(request, "metrics/partials/_runs.html", ctx)
        if request.GET.get("poll") and not ctx["active"]:
            return HttpResponseStopPolling(response.content)
        return response
    return render(request, "metrics/runs.html", ctx, status=status)


@login_required
@require_http_methods(["GET", "POST"])
def metric_runs(request: HttpRequest, study_id: int) -> HttpResponse:
    """GET: managers and evaluators read the runs; POST: an evaluator starts a metric."""
    if request.method == "GET":
        return _page(request, access.get_study_for_manager(request.user, study_id))
    study = access.get_study_for_evaluator(request.user, study_id)
    form = MetricRunForm(request.POST)
    if not form.is_valid():
        return _page(request, study, form, status=400)
    try:
        services.metric_run_start(study=study, metric=form.cleaned_data["metric"], options=form.options(),
                                  actor=request.user)
    except ServiceError as exc:
        return _page(request, study, form, str(exc), status=409)
    return redirect(reverse("metrics:runs", args=[study.pk]))


@login_required
@require_POST
def metric_run_retry(request: HttpRequest, study_id: int, run_id: int) -> HttpResponse:
    study = access.get_study_for_evaluator(request.user, study_id)
    try:
        run = MetricRun.objects.get(pk=run_id, study=study)
    except MetricRun.DoesNotExist:
        raise Http404(f"No metric run with id {run_id}") from None
    try:
        services.metric_run_retry(run=run, actor=request.user)
    except ServiceError as exc:
        return _page(request, study, error=str(exc), status=409)
    return redirect(reverse("metrics:runs", args=[study.pk]))


def _summary_csv(study, data: dict) -> HttpResponse:
    """One line per candidate; text cells pass through the exchange's formula guard."""
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="study-{study.pk}-summary.csv"'
    writer = csv.writer(response)
    header = ["candidate", "outputs", "rating", "rating_lower", "rating_upper"]
    for c in data["criteria"]:
        header += [f"likert_{c['key']}", f"likert_{c['key']}_lower", f"likert_{c['key']}_upper"]
    for m in data["metrics"]:
        header += [f"{m['name']}_{m['run']}", f"{m['name']}_{m['run']}_lower", f"{m['name']}_{m['run']}_upper",
                   f"{m['name']}_{m['run']}_config"]
    for j in data["judges"]:
        header += [f"judge_{j['name']}_win_rate"]
    writer.writerow([csv_cell(h) for h in header + ["latency_p50_ms", "latency_p95_ms", "completion_tokens_mean",
                                                    "cost_per_1000", "failure_rate", "failure_rate_lower",
                                                    "failure_rate_upper", "seconds_per_image"]])
    for r in data["rows"]:
        line = [csv_cell(r["candidate"]), r["outputs"], r["rating"], r["rating_lower"], r["rating_upper"]]
        for cell in r["likert"]:
            line += [cell["mean"], cell["lower"], cell["upper"]]
        for m, cell in zip(data["metrics"], r["metrics"]):
            line += [cell["value"], cell["lower"], cell["upper"], csv_cell(summary.metric_config_json(m))]
        line += [cell["win_rate"] for cell in r["judges"]]
        writer.writerow(line + [r["latency_p50"], r["latency_p95"], r["tokens"], r["cost_per_1000"],
                                r.get("failure_rate"), r.get("failure_lower"), r.get("failure_upper"),
                                r.get("seconds_per_image")])
    return response


def _summary_json(study, data: dict) -> JsonResponse:
    snapshot = data["snapshot"]
    return JsonResponse({
        "study": study.pk, "computed_at": snapshot.computed_at.isoformat() if snapshot else None,
        "ratings_computed_at": data["ratings_computed_at"],
        "criteria": data["criteria"], "metrics": data["metrics"], "judges": data["judges"], "rows": data["rows"],
        "budget": data["budget"], "recommendation": data["recommendation"], "agreement": data["agreement"],
        "output_agreement": data["output_agreement"], "failures": data.get("failures"),
    }, json_dumps_params={"allow_nan": False})


@login_required
@require_http_methods(["GET", "POST"])
def study_summary(request: HttpRequest, study_id: int) -> HttpResponse:
    """GET: managers and evaluators read the summary (``?format=csv|json`` exports it, ``?sort=`` orders
    it); POST: an evaluator sets the recommendation's budget."""
    if request.method == "POST":
        study = access.get_study_for_evaluator(request.user, study_id)
        form = SummaryBudgetForm(request.POST)
        if form.is_valid():
            services.summary_budget_set(study=study, actor=request.user, **form.cleaned_data)
            return redirect(reverse("metrics:summary", args=[study.pk]))
        status = 400
    else:
        study = access.get_study_for_manager(request.user, study_id)
        form, status = None, 200
    data = summary.study_summary(study, request.GET.get("sort", "")[:60])
    fmt = request.GET.get("format", "")
    if request.method == "GET" and fmt == "csv":
        return _summary_csv(study, data)
    if request.method == "GET" and fmt == "json":
        return _summary_json(study, data)
    evaluator = access.Role.EVALUATOR in access.study_roles(request.user, study)
    form = form or SummaryBudgetForm(initial=data["budget"])
    return render(request, "metrics/summary.html", {"study": study, "evaluator": evaluator, "form": form, **data},
                  status=status)


@login_required
@require_http_methods(["GET"])
def study_agreement(request: HttpRequest, study_id: int) -> HttpResponse:
    """GET: managers and evaluators read the agreement figures the worker stored (``?format=json``
    exports them; ``?criterion=`` picks the kappa heatmap's criterion); managers see pseudonyms."""
    from .agreement_service import agreement_page

    study = access.get_study_for_manager(request.user, study_id)
    evaluator = access.Role.EVALUATOR in access.study_roles(request.user, study)
    data = agreement_page(study, pseudonymize=not evaluator, criterion=request.GET.get("criterion", "")[:60],
                          export=request.GET.get("format", "") == "json")
    if data["snapshot"] is None:  # never computed: ask the worker (the one place that requests recomputes)
        from arena.services import AGREEMENT, ratings_request

        ratings_request(study_id=study.pk, slice_key=AGREEMENT)
    if request.GET.get("format", "") == "json":
        return JsonResponse({"study": study.pk, "computed_at": data.get("computed_at"),
                             "criteria": data["criteria"], "annotators": data["annotators"],
                             "least_agreed": data["least_agreed"], "least_agreed_by": data.get("least_agreed_by"),
                             "competence_note": data["competence_note"], "thresholds": data["thresholds"]},
                            json_dumps_params={"allow_nan": False})
    return render(request, "metrics/agreement.html", {"study": study, "evaluator": evaluator, **data})


@login_required
@require_http_methods(["GET", "POST"])
def reference_sets(request: HttpRequest, study_id: int) -> HttpResponse:
    """GET: managers and evaluators read the reference sets; POST: an evaluator uploads a zip of images."""
    from . import references
    from .forms import ReferenceSetForm

    if request.method == "GET":
        study = access.get_study_for_manager(request.user, study_id)
        form, error, status = ReferenceSetForm(), "", 200
    else:
        study = access.get_study_for_evaluator(request.user, study_id)
        form, error, status = ReferenceSetForm(request.POST, request.FILES), "", 400
        if form.is_valid():
            try:
                references.reference_set_upload(study=study, name=form.cleaned_data["name"],
                                                 upload=form.cleaned_data["archive"], actor=request.user)
            except ServiceError as exc:
                error, status = str(exc), 400
            else:
                return redirect(reverse("metrics:references", args=[study.pk]))
    evaluator = access.Role.EVALUATOR in access.study_roles(request.user, study)
    return render(request, "metrics/references.html",
                  {"study": study, "form": form, "error": error, "evaluator": evaluator,
                   "sets": references.reference_sets_page(study)}, status=status)


@login_required
@require_POST
def reference_remove(request: HttpRequest, study_id: int, set_id: int) -> HttpResponse:
    """POST: an evaluator removes a reference set (refused while a run compares with it)."""
    from django.contrib import messages

    from . import references
    from .forms import ReferenceSetForm
    from .models import ReferenceSet

    study = access.get_study_for_evaluator(request.user, study_id)
    ref = ReferenceSet.objects.filter(study=study, pk=set_id).first()
    if ref is None:
        raise Http404("No such reference set in this study")
    try:
        removed = references.reference_set_remove(ref=ref, actor=request.user)
    except ServiceError as exc:
        return render(request, "metrics/references.html",
                      {"study": study, "form": ReferenceSetForm(), "error": str(exc), "evaluator": True,
                       "sets": references.reference_sets_page(study)}, status=400)
    messages.success(request, f"Reference set {ref.name!r} removed, with its {removed} images.")
    return redirect(reverse("metrics:references", args=[study.pk]))


@login_required
@require_http_methods(["GET"])
def reference_image(request: HttpRequest, study_id: int, name: str) -> HttpResponse:
    """One reference image, for the study's evaluators and managers only; never kept by shared caches."""
    from django.http import FileResponse

    from . import references
    from .models import ReferenceImage

    study = access.get_study_for_manager(request.user, study_id)
    if not references.FILE_NAME.fullmatch(name):
        raise Http404("No such reference image")
    image = ReferenceImage.objects.filter(set__study=study, file=f"references/{study.pk}/{name}").first()
    if image is None:
        raise Http404("No such reference image")
    content_type = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}[name.rsplit(".", 1)[1]]
    try:
        handle = image.file.open("rb")
    except (FileNotFoundError, OSError):
        raise Http404("The reference image file is missing from storage") from None
    response = FileResponse(handle, content_type=content_type)
    response["Cache-Control"] = "private, no-store"
    response["X-Content-Type-Options"] = "nosniff"
    return response


@login_required
@require_http_methods(["GET"])
def failures(request: HttpRequest, study_id: int) -> HttpResponse:
    """Managers and evaluators read the failure analysis: the matrix and rates the worker stored
    with the summary, and a gallery of failing outputs (``?tag=``, ``?candidate=``, ``?page=``)."""
    from pathlib import PurePosixPath

    from annotation.models import Candidate

    from .failures import failure_gallery

    study = access.get_study_for_manager(request.user, study_id)
    snapshot, data = summary.stored_summary(study)
    if snapshot is None:  # never computed: ask the worker
        from arena.services import ratings_request

        ratings_request(study_id=study.pk)
    tag, candidate = request.GET.get("tag", "")[:100], request.GET.get("candidate", "")[:200]
    try:
        page_number = max(1, int(request.GET.get("page", "1")[:6]))
    except ValueError:
        page_number = 1
    candidates = list(Candidate.objects.filter(study=study).order_by("name").values_list("name", flat=True))
    error, status = "", 200
    if candidate and candidate not in candidates:  # checked here: an unknown name never reaches the database
        error, status, candidate = f"candidate: no candidate named {candidate[:60]!r} in this study", 400, ""
    page, tag = failure_gallery(study, tag=tag, candidate=candidate, page=page_number)
    items = []
    for out in page.object_list:
        thumb = (reverse("annotation:output_thumbnail", kwargs={"study_id": study.pk,
                                                                "name": PurePosixPath(out.thumbnail.name).name})
                 if out.thumbnail else "")
        image = (reverse("annotation:output_image", kwargs={"study_id": study.pk,
                                                            "name": PurePosixPath(out.image.name).name})
                 if out.image else "")
        items.append({"output": out, "thumbnail": thumb, "image": image})
    return render(request, "metrics/failures.html", {
        "study": study, "snapshot": snapshot, "failures": data.get("failures"), "page": page, "items": items,
        "tag": tag, "candidate": candidate, "tags": study.failure_tags or [], "candidates": candidates,
        "error": error,
    }, status=status)
