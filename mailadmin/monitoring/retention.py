"""Retention: raw auth events are kept MONITORING_EVENT_RETENTION_DAYS (default 90);
rollups, baselines and alerts are small and kept longer (rollups a year)."""

from __future__ import annotations

import datetime as dt
import logging

from django.conf import settings
from django.utils import timezone

from mailadmin.monitoring.models import AlertMailLog, AuthEvent, HourlyRollup, Rollup, SentItem

log = logging.getLogger(__name__)

BATCH = 5000
MAX_BATCHES = 200  # at most a million rows per run; the next run goes on
ROLLUP_DAYS = 400


def _prune(queryset, max_batches) -> int:
    total = 0
    for _ in range(max_batches):
        ids = list(queryset.values_list("pk", flat=True)[:BATCH])
        if not ids:
            break
        total += queryset.model.objects.filter(pk__in=ids).delete()[0]
    return total


def prune(now=None, *, max_batches: int = MAX_BATCHES) -> dict:
    now = now or timezone.now()
    cutoff = now - dt.timedelta(days=settings.MONITORING_EVENT_RETENTION_DAYS)
    events = _prune(AuthEvent.objects.filter(ts__lt=cutoff).order_by(), max_batches)
    rollups = _prune(Rollup.objects.filter(minute__lt=now - dt.timedelta(days=ROLLUP_DAYS)).order_by(), max_batches)
    hourly = HourlyRollup.objects.filter(hour__lt=now - dt.timedelta(days=ROLLUP_DAYS)).order_by()
    rollups += _prune(hourly, max_batches)
    mails = _prune(AlertMailLog.objects.filter(sent_at__lt=now - dt.timedelta(days=30)).order_by(), max_batches)
    # Ids of counted sent-count items: a redelivery comes within hours; kept as long as events.
    sent_ids = _prune(SentItem.objects.filter(received__lt=cutoff).order_by(), max_batches)
    result = {"events": events, "rollups": rollups, "mail_log": mails, "sent_ids": sent_ids}
    if any(result.values()):
        log.info("retention: pruned %s", result)
    return result
