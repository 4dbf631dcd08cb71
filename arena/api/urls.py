"""The arena app's API routes (included under ``/api/`` by evalsite/api_urls.py)."""
from django.urls import path

from . import views

urlpatterns = [
    path("studies/<int:study_id>/leaderboard", views.leaderboard, name="api-leaderboard"),
    path("studies/<int:study_id>/progress", views.progress, name="api-progress"),
]
