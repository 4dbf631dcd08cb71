"""Settings for the test suite: the deployment settings, with a key and host names made up per run.

Tests run with ``DEBUG`` off, as a deployment does, so ``settings.py`` refuses to start without a
strong ``SECRET_KEY``.  Rather than weaken that default, the suite generates a key for the run
(unless the environment has one) and puts it in the environment, from which the worker and
``manage.py`` processes that tests start inherit it.
"""
import os
import secrets

os.environ.setdefault("SECRET_KEY", secrets.token_urlsafe(50))
os.environ.setdefault("ALLOWED_HOSTS", "testserver,localhost,127.0.0.1")

from evalsite.settings import *  # noqa: E402,F403
