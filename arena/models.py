"""Cached leaderboards: the web process reads these and never recomputes on a request."""
from django.db import models

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
