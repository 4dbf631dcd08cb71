"""Automated metric runs: one run per study, metric and options; scores per output and per candidate."""
from __future__ import annotations

from django.conf import settings
from django.db import models

from annotation.models import Candidate, Output, Study


class MetricRun(models.Model):
    """One metric computed over a study's finished outputs, by a worker, with its progress.

    ``(study, metric, options_hash)`` is unique: starting the same metric with the same
    options again reuses the run, which then scores only the outputs it has not scored yet.
    """

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="metric_runs")
    metric = models.CharField(max_length=40)
    options = models.JSONField(default=dict, blank=True, help_text="model path, threshold...")
    options_hash = models.CharField(max_length=64, help_text="SHA-256 of the options as canonical JSON.")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    error = models.TextField(blank=True)
    n_total = models.PositiveIntegerField(default=0, help_text="Finished outputs with a reference.")
    n_done = models.PositiveIntegerField(default=0)
    n_skipped = models.PositiveIntegerField(default=0, help_text="Finished outputs whose prompt has no reference.")
    config = models.JSONField(default=dict, blank=True, help_text="The exact configuration the metric reported.")
    claim = models.CharField(max_length=64, blank=True, help_text="Id of the task run that holds this run.")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                   related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["study", "created_at", "pk"]
        constraints = [
            models.UniqueConstraint(fields=["study", "metric", "options_hash"], name="metric_run_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.metric} on {self.study}"


class OutputScore(models.Model):
    """An item-level metric's value for one output (``None`` where the metric gives no number)."""

    run = models.ForeignKey(MetricRun, on_delete=models.CASCADE, related_name="output_scores")
    output = models.ForeignKey(Output, on_delete=models.CASCADE, related_name="+")
    value = models.FloatField(null=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run", "output"], name="output_score_unique")]

    def __str__(self) -> str:
        return f"{self.run.metric}={self.value} for output {self.output_id}"


class CandidateScore(models.Model):
    """A candidate's metric over all its scored outputs or one prompt tag's (``tag:<tag>``),
    with a bootstrap interval over items; recomputed from the source rows after each run."""

    run = models.ForeignKey(MetricRun, on_delete=models.CASCADE, related_name="candidate_scores")
    candidate = models.ForeignKey(Candidate, on_delete=models.CASCADE, related_name="+")
    slice_key = models.CharField(max_length=110)  # "all" or "tag:<tag>" (PromptTag.tag is 100 long)
    value = models.FloatField(null=True)
    lower = models.FloatField(null=True)
    upper = models.FloatField(null=True)
    n = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["run", "slice_key", "candidate__name"]
        constraints = [
            models.UniqueConstraint(fields=["run", "candidate", "slice_key"], name="candidate_score_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.run.metric} {self.slice_key} {self.candidate_id}: {self.value}"


class SummaryBudget(models.Model):
    """The cost and latency budget an evaluator sets for the summary's recommendation (blank: no limit)."""

    study = models.OneToOneField(Study, on_delete=models.CASCADE, related_name="summary_budget")
    max_cost_per_1000 = models.FloatField(null=True, blank=True, help_text="Most cost per 1,000 outputs.")
    max_latency_p95_ms = models.FloatField(null=True, blank=True, help_text="Most 95th-percentile latency, ms.")
    updated_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                   related_name="+")
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"budget of {self.study}"
