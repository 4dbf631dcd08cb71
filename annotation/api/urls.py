"""The annotation app's API routes (included under ``/api/`` by evalsite/api_urls.py)."""
from django.urls import path

from .. import urls as _pages  # noqa: F401  (registers the task_token path converter)
from . import views

urlpatterns = [
    path("studies/", views.StudyListApi.as_view(), name="api-studies"),
    path("studies/<int:study_id>/", views.StudyDetailApi.as_view(), name="api-study"),
    path("studies/<int:study_id>/tasks/next", views.TaskNextApi.as_view(), name="api-task-next"),
    path("tasks/<task_token:token>/judgment", views.JudgmentSubmitApi.as_view(), name="api-judgment"),
    path("tasks/<task_token:token>/skip", views.TaskSkipApi.as_view(), name="api-task-skip"),
    path("tasks/<task_token:token>/undo", views.JudgmentUndoApi.as_view(), name="api-task-undo"),
    path("studies/<int:study_id>/outputs", views.OutputListApi.as_view(), name="api-outputs"),
    path("studies/<int:study_id>/judgments", views.JudgmentExportApi.as_view(), name="api-judgments"),
    path("studies/<int:study_id>/judgments/import", views.JudgmentImportApi.as_view(), name="api-judgments-import"),
    path("studies/<int:study_id>/audit", views.audit_log, name="api-audit"),
]
