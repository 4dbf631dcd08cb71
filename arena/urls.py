from django.urls import path

from . import views

app_name = "arena"

urlpatterns = [
    path("studies/<int:study_id>/leaderboard/", views.leaderboard, name="leaderboard"),
    path("studies/<int:study_id>/leaderboard/recompute/", views.recompute, name="recompute"),
]
