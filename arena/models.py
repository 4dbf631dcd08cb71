"""Cached leaderboards (the web process reads these and never recomputes on a request),
and LLM judges with their verdicts."""
from django.conf import settings
from django.db import models

from . import outcomes
from .board import Board


class RatingSnapshot(models.Model):
    study = models.ForeignKey(
        "annotation.Study", on_delete=models.CASCADE, related_name="rating_snapshots"
    )
    slice_key = models.CharField(max_length=200, default="all")
    method = models.CharField(max_length=32, default="bt")
    payload = models.JSONField(default=dict)
    n_judgments = models.PositiveIntegerField(default=0)
    last_judgment_id = models.BigIntegerField(default=0)
    study_version = models.PositiveIntegerField(default=0, help_text="Study.version the snapshot was computed at.")
    cells = models.BinaryField(
        null=True, blank=True,
        help_text="Counted cells of the judgments up to settled_judgment_id (selectors.Cells.to_bytes).",
    )
    settled_judgment_id = models.BigIntegerField(
        default=0, help_text="Every judgment of the slice up to this id is in cells; later ones are counted afresh."
    )
    computed_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["study", "slice_key", "method"], name="snapshot_unique_slice_method"
            )
        ]

    def __str__(self) -> str:
        return f"{self.study} {self.slice_key} {self.method}"

    @property
    def board(self) -> Board | None:
        """The Bradley-Terry payload, typed (None for an empty one or another method's)."""
        return Board.from_json(self.payload) if self.method == "bt" else None


class RatingRequest(models.Model):
    """The one pending refresh of a (study, slice): votes set it, a worker claims it.

    ``pending`` flips to true by a conditional UPDATE (only the vote that flips it
    enqueues a task) and back to false when a worker claims it, also conditionally, so
    a burst of votes costs one recompute and no vote is left uncounted.
    """

    study = models.ForeignKey("annotation.Study", on_delete=models.CASCADE, related_name="+")
    slice_key = models.CharField(max_length=200, default="all")
    pending = models.BooleanField(default=False)
    requested_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["study", "slice_key"], name="rating_request_unique_slice")
        ]

    def __str__(self) -> str:
        return f"{self.study_id} {self.slice_key} {'pending' if self.pending else 'idle'}"


class Judge(models.Model):
    """An LLM judge: a model spec like a candidate's, asked pairwise questions (kind
    ``pairwise``) or Likert criteria (kind ``likert``) from a rubric.

    A judge is its own kind of rater: its verdicts live in ``JudgeVerdict``, never in
    ``annotation.Judgment``, so human ratings and agreement figures never include it.  The
    fields after ``created_at`` are the state of its latest run (one run at a time).
    """

    class Backend(models.TextChoices):
        OPENAI = "openai", "OpenAI-compatible endpoint"
        TRANSFORMERS = "transformers", "Hugging Face transformers"

    class Kind(models.TextChoices):
        PAIRWISE = "pairwise", "Pairwise: which of two outputs is better"
        LIKERT = "likert", "Likert: each output on each criterion of the study"

    class Status(models.TextChoices):
        IDLE = "", "Not started"
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    study = models.ForeignKey("annotation.Study", on_delete=models.CASCADE, related_name="judges")
    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.PAIRWISE)
    backend = models.CharField(max_length=20, choices=Backend.choices)
    spec = models.JSONField(default=dict, blank=True, help_text="Checked by the same policy as candidate specs.")
    rubric = models.TextField(help_text="The judge's prompt: {prompt}, {output_1} and {output_2} (pairwise), or "
                                        "{prompt}, {output}, {criterion} and {scale} (likert).")
    max_new_tokens = models.PositiveIntegerField(default=512, help_text="Longest reply asked for (greedy decoding).")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                   related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.IDLE, blank=True)
    claim = models.CharField(max_length=64, blank=True, help_text="Id of the task run that holds the run.")
    error = models.TextField(blank=True, help_text="Scrubbed: the last endpoint or backend error.")
    n_total = models.PositiveIntegerField(
        default=0, help_text="Items at the last run: pairwise units, or outputs x criteria for a Likert judge.")
    n_done = models.PositiveIntegerField(default=0, help_text="Items answered (a verdict, or a score row).")
    n_failed = models.PositiveIntegerField(default=0, help_text="Items whose requests failed in the last run.")
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["study", "name"]
        constraints = [models.UniqueConstraint(fields=["study", "name"], name="judge_unique_name")]

    def __str__(self) -> str:
        return self.name


class JudgeVerdict(models.Model):
    """A judge's combined verdict on one unit, asked in both orders (``output_a`` first, then
    ``output_b`` first); an inconsistent pair is stored as a tie with ``consistent`` false."""

    judge = models.ForeignKey(Judge, on_delete=models.CASCADE, related_name="verdicts")
    unit = models.ForeignKey("annotation.Unit", on_delete=models.CASCADE, related_name="+")
    outcome = models.CharField(max_length=10, choices=list(zip(outcomes.STORED, outcomes.LABELS)))
    first_order_reply = models.TextField(blank=True, help_text="The reply with output_a shown first (trimmed).")
    second_order_reply = models.TextField(blank=True, help_text="The reply with output_b shown first (trimmed).")
    consistent = models.BooleanField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["judge", "unit"], name="judge_verdict_unique")]

    def __str__(self) -> str:
        return f"{self.judge} on unit {self.unit_id}: {self.outcome}"


class JudgeScore(models.Model):
    """A Likert judge's point for one output on one criterion of the study.

    ``value`` is null when the reply had no ``SCORE: <integer>`` last line on the criterion's
    scale (unparseable): the item is answered (a rerun does not ask it again) but has no score.
    """

    judge = models.ForeignKey(Judge, on_delete=models.CASCADE, related_name="scores")
    output = models.ForeignKey("annotation.Output", on_delete=models.CASCADE, related_name="+")
    criterion = models.CharField(max_length=64, help_text="The key of the study's Likert criterion.")
    value = models.PositiveSmallIntegerField(null=True, blank=True, help_text="Null: the reply was unparseable.")
    reply = models.TextField(blank=True, help_text="The judge's reply (trimmed).")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["judge", "output", "criterion"], name="judge_score_unique")]

    def __str__(self) -> str:
        return f"{self.judge} on output {self.output_id} {self.criterion}: {self.value}"
