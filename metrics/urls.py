from django.urls import path

from . import views

app_name = "metrics"

urlpatterns = [
    path("studies/<int:study_id>/metrics/", views.metric_runs, name="runs"),
    path("studies/<int:study_id>/metrics/<int:run_id>/retry/", views.metric_run_retry, name="run_retry"),
    path("studies/<int:study_id>/summary/", views.study_summary, name="summary"),
    path("studies/<int:study_id>/agreement/", views.study_agreement, name="agreement"),
    path("studies/<int:study_id>/references/", views.reference_sets, name="references"),
    path("studies/<int:study_id>/references/<int:set_id>/remove/", views.reference_remove, name="reference_remove"),
    path("studies/<int:study_id>/references/<str:name>", views.reference_image, name="reference_image"),
    path("studies/<int:study_id>/failures/", views.failures, name="failures"),
]
