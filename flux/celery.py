"""The Celery app. Tasks live in each app's tasks.py as thin wrappers around plain functions."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "flux.settings")

app = Celery("flux")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
