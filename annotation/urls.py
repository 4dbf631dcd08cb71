from django.urls import path

from . import views

app_name = "annotation"

urlpatterns = [
    path("", views.home, name="home"),
    path("studies/new/", views.study_create, name="study_create"),
    path("studies/<int:study_id>/", views.study_detail, name="study"),
    path("studies/<int:study_id>/settings/", views.study_settings, name="settings"),
    path("studies/<int:study_id>/progress/", views.study_progress, name="progress"),
    path("studies/<int:study_id>/candidates/", views.candidate_add, name="candidate_add"),
    path("studies/<int:study_id>/members/", views.member_add, name="member_add"),
    path("studies/<int:study_id>/generate/", views.generation_start, name="generate"),
    path("studies/<int:study_id>/prompts/", views.prompts_add, name="prompts_add"),
    path("studies/<int:study_id>/outputs/retry-failed/", views.outputs_retry_failed, name="retry_failed"),
    path("studies/<int:study_id>/outputs/<int:output_id>/retry/", views.output_retry, name="output_retry"),
    path("studies/<int:study_id>/annotate/", views.annotate, name="annotate"),
    path("tasks/<str:token>/", views.judgment_submit, name="submit"),
]
