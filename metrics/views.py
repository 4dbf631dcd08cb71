"""The metric runs page of a study: start a metric, watch its progress, read its table."""
from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST
from django_htmx.http import HttpResponseStopPolling

from annotation import access
from annotation.services import ServiceError

from . import selectors, services
from .forms import MetricRunForm
from .models import MetricRun


def _page(request: HttpRequest, study, form=None, error: str = "", status: int = 200) -> HttpResponse:
    slice_key = request.GET.get("slice", "all")
    ctx = {"study": study, "form": form or MetricRunForm(),
           "evaluator": access.Role.EVALUATOR in access.study_roles(request.user, study), "error": error,
           **selectors.metric_runs_table(study, slice_key)}
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
