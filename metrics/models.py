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
    n_total = models.PositiveIntegerField(default=0, help_text="Finished outputs the metric can score.")
    n_done = models.PositiveIntegerField(default=0)
    n_skipped = models.PositiveIntegerField(default=0, help_text="Finished outputs the metric cannot score (no "
                                            "reference, no image or no text, by metric).")
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
    # perplexity: what the value is made of, so a candidate's corpus perplexity is
    # exp(sum nll / sum tokens) over its outputs (null for the other metrics)
    nll = models.FloatField(null=True, blank=True, help_text="perplexity: summed token NLL (nats).")
    tokens = models.PositiveIntegerField(null=True, blank=True, help_text="perplexity: scored tokens.")

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


def reference_image_path(instance: "ReferenceImage", filename: str) -> str:
    """An opaque name under ``references/<study id>/``: nothing of the uploaded name is kept but
    its type's extension."""
    import os
    import uuid

    ext = os.path.splitext(filename)[1].lower()
    return f"references/{instance.set.study_id}/{uuid.uuid4().hex}{ext if ext in ('.png', '.jpg', '.webp') else ''}"


def reference_features_path(instance: "ReferenceSet", filename: str) -> str:
    import uuid

    return f"references/{instance.study_id}/features/{uuid.uuid4().hex}.npz"


class ReferenceSet(models.Model):
    """Real images an evaluator uploaded (a zip) for FID and KID to compare the candidates with.

    Written whole or not at all: a refused archive leaves no row and no file.  ``features``
    caches the Inception features of its images (an ``.npz``), computed by the first FID or
    KID run that needs them, with the extractor's configuration in ``features_config``.
    """

    class Status(models.TextChoices):
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="reference_sets")
    name = models.CharField(max_length=100)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                   related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    n_images = models.PositiveIntegerField(default=0)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.READY)
    error = models.TextField(blank=True)
    features = models.FileField(upload_to=reference_features_path, max_length=300, blank=True, default="")
    features_config = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["study", "-created_at", "pk"]
        constraints = [models.UniqueConstraint(fields=["study", "name"], name="reference_set_unique_name")]

    def __str__(self) -> str:
        return self.name


class ReferenceImage(models.Model):
    set = models.ForeignKey(ReferenceSet, on_delete=models.CASCADE, related_name="images")
    file = models.FileField(upload_to=reference_image_path, max_length=300, db_index=True)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()

    class Meta:
        ordering = ["set", "pk"]

    def __str__(self) -> str:
        return self.file.name
