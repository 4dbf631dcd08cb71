"""Start one Celery worker and the web server together; Ctrl-C stops both cleanly."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from django.conf import settings
from django.core.management.base import BaseCommand

from annotation.demo_data import DEMO_USERS


class Command(BaseCommand):
    help = "Run a Celery worker and the development web server (the embedded default of `make run`)."

    def add_arguments(self, parser):
        parser.add_argument("--addr", default="127.0.0.1:8000")
        parser.add_argument("--concurrency", type=int, default=2,
                            help="Worker processes (2: ratings refresh while a batch generates).")

    def handle(self, *args, addr: str, concurrency: int, **options):
        # Both children read their settings from this environment (DEBUG=1 from `make run`,
        # or a deployment's SECRET_KEY and ALLOWED_HOSTS), so they run as this process does.
        env = os.environ.copy()
        python = sys.executable
        worker = [
            python, "-m", "celery", "-A", "evalsite", "worker", "--loglevel", "INFO",
            "--concurrency", str(concurrency), "--without-mingle", "--without-gossip",
            "--queues", f"{settings.QUEUE_GENERATION},{settings.QUEUE_AGGREGATION}",
        ]
        web = [python, "manage.py", "runserver", addr, "--noreload"]
        # Children get their own process group so Ctrl-C reaches only us; we stop them in order.
        procs = [
            subprocess.Popen(worker, env=env, cwd=settings.BASE_DIR, start_new_session=True),
            subprocess.Popen(web, env=env, cwd=settings.BASE_DIR, start_new_session=True),
        ]
        self.stdout.write(self.style.SUCCESS(f"\nEvalsite is starting on http://{addr}/"))
        self.stdout.write(f"Database: {settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]}; "
                          f"broker: {settings.CELERY_BROKER_URL.split('://')[0]}")
        if settings.DEBUG:  # load_demo makes these accounts only with DEBUG on
            self.stdout.write("Demo logins (username / password):")
            for username, _role, password in DEMO_USERS:
                self.stdout.write(f"  {username:<12} / {password}")
        self.stdout.write("Press Ctrl-C to stop.\n")
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        try:
            while all(p.poll() is None for p in procs):
                time.sleep(0.5)
            failed = [p for p in procs if p.poll() is not None]
            self.stderr.write(f"A process exited (code {failed[0].returncode}); stopping the rest.")
        except KeyboardInterrupt:
            self.stdout.write("\nStopping…")
        finally:
            for p in procs:
                if p.poll() is None:
                    p.terminate()  # the worker's main process shuts its pool down warmly
            deadline = time.monotonic() + 15
            for p in procs:
                try:
                    p.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
        self.stdout.write("Stopped.")
