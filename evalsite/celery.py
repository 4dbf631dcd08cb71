"""The Celery application shared by every worker and by the web process (to enqueue)."""
import os

from celery import Celery
from celery.signals import task_received, worker_init, worker_ready, worker_shutdown

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "evalsite.settings")

app = Celery("evalsite")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


# Worker liveness (annotation.heartbeat): a worker records itself before its pool starts, then
# beats and frees the outputs of workers that died, so no separate beat process is needed.
# Connected after Celery's Django fix-up, whose own worker_init handler sets Django up.
@worker_init.connect
def _register_worker(sender, **kwargs):
    from annotation import heartbeat

    heartbeat.worker_started(sender.hostname)


@worker_ready.connect
def _start_heartbeat(sender, **kwargs):
    from annotation import heartbeat

    heartbeat.worker_ready(sender.hostname)


@task_received.connect
def _note_received(sender, request, **kwargs):
    if request.name == "annotation.tasks.generate_outputs":
        from annotation import heartbeat

        heartbeat.batch_received(*request.args, **request.kwargs)


@worker_shutdown.connect
def _stop_heartbeat(sender, **kwargs):
    from annotation import heartbeat

    heartbeat.worker_stopping()
