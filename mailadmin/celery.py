"""The Celery application (Django convention: tasks are found in each app's tasks.py)."""

import os

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mailadmin.settings")

app = Celery("mailadmin")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.task_prerun.connect
@signals.task_postrun.connect
def close_old_connections(task=None, **kwargs):
    """Around every task, what Django does around every request: close a database connection
    that is broken or older than CONN_MAX_AGE, keep the others (CELERY_DB_REUSE_MAX stops
    Celery from closing every connection around every task). Not for eager tasks: they run
    inside the caller's transaction, like Celery's own fixup."""
    if task is None or getattr(task.request, "is_eager", False):
        return
    from django.db import close_old_connections as close

    close()
