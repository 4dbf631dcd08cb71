from django.urls import path

from annotation.api import views as annotation_views

from . import views

urlpatterns = [
    path("studies/<int:study_id>/audit", annotation_views.audit_log, name="api-audit"),
    path("studies/<int:study_id>/leaderboard", views.leaderboard, name="api-leaderboard"),
    path("studies/<int:study_id>/progress", views.progress, name="api-progress"),
]
