"""Messages sent per mailbox per hour, from the smtpd's `monitoring.record_messages_sent`.

Each item is {"id": UUID, "username", "ts", "count"}. Idempotent under redelivery (the
smtpd's at-least-once publisher, a retried or re-queued task): the batch is counted in
one transaction together with the ids of its items, and an item whose id is already
stored adds nothing. Items from an older smtpd without an id are counted as before.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from mailadmin.monitoring.ingest import InvalidEvent, parse_ts
from mailadmin.monitoring.models import SentCount, SentItem, domain_of

log = logging.getLogger(__name__)


def _parse(item) -> tuple[uuid.UUID | None, str, object, int]:
    username = str(item["username"]).strip().lower()[:320]
    hour = parse_ts(item["ts"]).replace(minute=0, second=0, microsecond=0)
    count = int(item.get("count", 1))
    if not username or count < 0:
        raise InvalidEvent("username or count")
    raw_id = item.get("id")
    return (uuid.UUID(str(raw_id)) if raw_id is not None else None), username, hour, count


def record_sent(items) -> int:
    """Add a batch of sent-count items; returns how many were counted (new)."""
    parsed, seen = [], set()
    for item in items or []:
        try:
            item_id, username, hour, count = _parse(item)
        except (AttributeError, KeyError, TypeError, ValueError, InvalidEvent) as exc:
            log.warning("sent-count item rejected: %s", type(exc).__name__ if not str(exc) else exc)
            continue
        if item_id is not None:
            if item_id in seen:
                continue  # repeated within the batch
            seen.add(item_id)
        parsed.append((item_id, username, hour, count))
    if not parsed:
        return 0
    now = timezone.now()
    with transaction.atomic():
        known = set(SentItem.objects.filter(item_id__in=seen).values_list("item_id", flat=True))
        fresh = [p for p in parsed if p[0] is None or p[0] not in known]
        # A concurrent delivery of the same batch makes this insert fail on the unique id;
        # the task's retry then finds the ids and counts nothing twice.
        SentItem.objects.bulk_create([SentItem(item_id=p[0], received=now) for p in fresh if p[0] is not None])
        totals = Counter()
        for _, username, hour, count in fresh:
            totals[(username, hour)] += count
        for (username, hour), count in sorted(totals.items()):
            obj, created = SentCount.objects.select_for_update().get_or_create(
                username=username, hour=hour, defaults={"count": count, "domain_name": domain_of(username)}
            )
            if not created:
                SentCount.objects.filter(pk=obj.pk).update(count=F("count") + count)
    if len(fresh) < len(parsed):
        log.info("sent counts: %d item(s) already counted (redelivery)", len(parsed) - len(fresh))
    return len(fresh)
