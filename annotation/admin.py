from django.contrib import admin

from .models import (
    Assignment,
    AuditEntry,
    Candidate,
    Invitation,
    Judgment,
    Output,
    Prompt,
    PromptTag,
    Study,
    StudyMember,
    Unit,
)


class MemberInline(admin.TabularInline):
    model = StudyMember
    extra = 0
    raw_id_fields = ["user"]


@admin.register(Study)
class StudyAdmin(admin.ModelAdmin):
    list_display = ["name", "created_by", "created_at", "overlap"]
    search_fields = ["name"]
    inlines = [MemberInline]


@admin.register(StudyMember)
class StudyMemberAdmin(admin.ModelAdmin):
    list_display = ["study", "user", "role", "group", "excluded"]
    list_filter = ["role", "excluded"]


class PromptTagInline(admin.TabularInline):
    model = PromptTag
    extra = 0
    fields = ["tag"]


@admin.register(Invitation)
class InvitationAdmin(admin.ModelAdmin):
    """Links are made on the study page, where the token is shown once: the admin lists and
    revokes-by-date them but cannot add one, and the stored hash is never editable."""

    list_display = ["id", "study", "role", "group", "created_by", "expires_at", "uses_of", "link_state"]
    list_filter = ["role"]
    search_fields = ["study__name", "group"]
    raw_id_fields = ["study", "created_by"]
    readonly_fields = ["token_hash", "created_at", "uses"]

    def has_add_permission(self, request) -> bool:
        return False

    @admin.display(description="uses")
    def uses_of(self, obj: Invitation) -> str:
        return f"{obj.uses} / {obj.max_uses if obj.max_uses is not None else 'any'}"

    @admin.display(description="state")
    def link_state(self, obj: Invitation) -> str:
        from django.utils import timezone

        return obj.state(timezone.now())


@admin.register(PromptTag)
class PromptTagAdmin(admin.ModelAdmin):
    list_display = ["tag", "prompt", "study"]
    list_filter = ["tag"]
    raw_id_fields = ["prompt", "study"]


@admin.register(Prompt)
class PromptAdmin(admin.ModelAdmin):
    inlines = [PromptTagInline]
    list_display = ["external_id", "study", "is_gold", "position"]
    list_filter = ["study"]
    search_fields = ["external_id", "text"]


@admin.register(Candidate)
class CandidateAdmin(admin.ModelAdmin):
    list_display = ["name", "study", "backend", "created_at"]
    list_filter = ["backend"]


@admin.register(Output)
class OutputAdmin(admin.ModelAdmin):
    list_display = ["id", "candidate", "prompt", "sample_index", "status", "latency_ms", "cost"]
    list_filter = ["status", "candidate__backend"]
    raw_id_fields = ["prompt", "candidate", "study"]


@admin.register(Unit)
class UnitAdmin(admin.ModelAdmin):
    list_display = ["id", "study", "kind", "prompt", "needed", "is_gold"]
    raw_id_fields = ["prompt", "output_a", "output_b", "study"]


@admin.register(Assignment)
class AssignmentAdmin(admin.ModelAdmin):
    list_display = ["id", "unit", "annotator", "leased_at", "expires_at", "submitted_at"]
    raw_id_fields = ["unit", "annotator"]


@admin.register(Judgment)
class JudgmentAdmin(admin.ModelAdmin):
    list_display = ["id", "study", "annotator", "outcome", "left_is_a", "submitted_at"]
    list_filter = ["outcome"]
    raw_id_fields = ["assignment", "unit", "annotator", "study"]


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    """Read-only: an audit log that staff could edit would prove nothing."""

    list_display = ["at", "study", "actor_name", "action", "target"]
    list_filter = ["action"]
    search_fields = ["actor_name", "target", "study__name"]
    date_hierarchy = "at"
    readonly_fields = ["study", "actor", "actor_name", "at", "action", "target", "detail"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        # The admin asks this when a study is deleted with its entries: let superusers do that.
        return request.user.is_superuser
