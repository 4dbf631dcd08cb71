from django.urls import path

from . import views

app_name = "arena"

urlpatterns = [
    path("studies/<int:study_id>/leaderboard/", views.leaderboard, name="leaderboard"),
    path("studies/<int:study_id>/leaderboard/recompute/", views.recompute, name="recompute"),
    path("studies/<int:study_id>/leaderboard/mode/", views.ratings_mode, name="ratings_mode"),
    path("studies/<int:study_id>/judges/", views.judges, name="judges"),
    path("studies/<int:study_id>/judges/<int:judge_id>/start/", views.judge_start, name="judge_start"),
    path("studies/<int:study_id>/judges/<int:judge_id>/edit/", views.judge_edit, name="judge_edit"),
]
