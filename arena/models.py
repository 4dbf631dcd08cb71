"""Cached leaderboards: the web process reads these and never recomputes on a request."""
from django.db import models


class RatingSnapshot(models.Model):
    study = models.ForeignKey(
        "annotation.Study", on_delete=models.CASCADE, related_name="rating_snapshots"
    )
    slice_key = models.CharField(max_length=200, default="all")
    method = models.CharField(max_length=32, default="bt")
    payload = models.JSONField(default=dict)
    n_judgments = models.PositiveIntegerField(default=0)
    last_judgment_id = models.BigIntegerField(default=0)
    computed_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["study", "slice_key", "method"], name="snapshot_unique_slice_method"
            )
        ]

    def __str__(self) -> str:
        return f"{self.study} {self.slice_key} {self.method}"
