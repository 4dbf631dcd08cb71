from django.urls import path, register_converter

from . import views


class TaskTokenConverter:
    """An assignment's token as ``secrets.token_urlsafe(32)`` makes it: 43 URL-safe base64
    characters. Any other text (a NUL, a megabyte) is a 404 before a query is made."""

    regex = "[A-Za-z0-9_-]{43}"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(TaskTokenConverter, "task_token")
# An invitation link's token is made the same way (its SHA-256 is what is stored).
register_converter(TaskTokenConverter, "invitation_token")



class ImageNameConverter:
    """An output image's file name as ``models.output_image_path`` makes it: 32 hex digits and an
    image suffix.  Anything else is a 404 before a query is made."""

    regex = "[0-9a-f]{32}\\.(?:png|jpg|jpeg|webp)"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(ImageNameConverter, "image_name")

app_name = "annotation"

urlpatterns = [
    path("", views.home, name="home"),
    path("studies/new/", views.study_create, name="study_create"),
    path("studies/<int:study_id>/", views.study_detail, name="study"),
    path("studies/<int:study_id>/settings/", views.study_settings, name="settings"),
    path("studies/<int:study_id>/progress/", views.study_progress, name="progress"),
    path("studies/<int:study_id>/candidates/", views.candidate_add, name="candidate_add"),
    path("studies/<int:study_id>/members/", views.member_add, name="member_add"),
    path("studies/<int:study_id>/members/<int:user_id>/exclude/", views.member_exclude, name="member_exclude"),
    path("studies/<int:study_id>/members/<int:user_id>/remove/", views.member_remove, name="member_remove"),
    path("studies/<int:study_id>/members/<int:user_id>/change/", views.member_change, name="member_change"),
    path("studies/<int:study_id>/candidates/<int:candidate_id>/rename/", views.candidate_rename,
         name="candidate_rename"),
    path("studies/<int:study_id>/candidates/<int:candidate_id>/remove/", views.candidate_remove,
         name="candidate_remove"),
    path("studies/<int:study_id>/candidates/<int:candidate_id>/hide/", views.candidate_hide, name="candidate_hide"),
    path("studies/<int:study_id>/invitations/", views.invitation_create, name="invitation_create"),
    path("studies/<int:study_id>/invitations/<int:invitation_id>/revoke/", views.invitation_revoke,
         name="invitation_revoke"),
    path("invitations/<invitation_token:token>/", views.invitation, name="invitation"),
    path("studies/<int:study_id>/audit/", views.study_audit, name="audit"),
    path("studies/<int:study_id>/generate/", views.generation_start, name="generate"),
    path("studies/<int:study_id>/prompts/", views.prompts_add, name="prompts_add"),
    path("studies/<int:study_id>/outputs/retry-failed/", views.outputs_retry_failed, name="retry_failed"),
    path("studies/<int:study_id>/outputs/<int:output_id>/retry/", views.output_retry, name="output_retry"),
    path("studies/<int:study_id>/annotate/", views.annotate, name="annotate"),
    path("studies/<int:study_id>/images/<image_name:name>", views.output_image, name="output_image"),
    path("studies/<int:study_id>/images/thumbs/<image_name:name>", views.output_thumbnail, name="output_thumbnail"),
    path("studies/<int:study_id>/annotate/instructions/", views.annotate_instructions, name="instructions"),
    path("studies/<int:study_id>/instructions/", views.study_instructions, name="instructions_edit"),
    path("studies/<int:study_id>/quality/", views.quality, name="quality"),
    path("studies/<int:study_id>/adjudicate/", views.adjudicate, name="adjudicate"),
    path("studies/<int:study_id>/judgments/", views.judgments, name="judgments"),
    path("studies/<int:study_id>/identity/", views.identity_check, name="identity"),
    path("studies/<int:study_id>/identity/<int:output_id>/", views.output_identity, name="output_identity"),
    path("studies/<int:study_id>/rule-ties/", views.rule_ties, name="rule_ties"),
    path("studies/<int:study_id>/checks/", views.checks, name="checks"),
    path("studies/<int:study_id>/checks/settings/", views.checks_settings, name="checks_settings"),
    path("studies/<int:study_id>/checks/upload/", views.checks_upload, name="checks_upload"),
    path("studies/<int:study_id>/checks/attention/", views.checks_attention, name="checks_attention"),
    path("studies/<int:study_id>/checks/<int:unit_id>/remove/", views.check_remove, name="check_remove"),
    path("studies/<int:study_id>/quiz/", views.quiz, name="quiz"),
    path("studies/<int:study_id>/quiz/start/", views.quiz_start, name="quiz_start"),
    path("studies/<int:study_id>/quiz/answer/", views.quiz_answer, name="quiz_answer"),
    path("tasks/<task_token:token>/", views.judgment_submit, name="submit"),
    path("tasks/<task_token:token>/skip/", views.task_skip, name="skip"),
    path("tasks/<task_token:token>/undo/", views.judgment_undo, name="undo"),
]
