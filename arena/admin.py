from django.contrib import admin

from .models import RatingSnapshot


@admin.register(RatingSnapshot)
class RatingSnapshotAdmin(admin.ModelAdmin):
    list_display = ["study", "slice_key", "method", "n_judgments", "computed_at"]
    readonly_fields = ["computed_at"]
