"""Alert email: critical and high at once, medium in an hourly digest, low in a daily one.

Recipients are the active superadmins plus the admins of the alert's domain.
Each recipient gets at most MONITORING_ALERT_MAILS_PER_HOUR mails an hour; an
immediate alert over the limit is folded into the next hourly digest. Emails
are built from three templates (subject, text, HTML) and carry no credential,
fingerprint or token: evidence samples hold only time, address, place,
mechanism, TLS, EHLO and result.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db import IntegrityError
from django.template.loader import render_to_string
from django.utils import timezone

from mailadmin.monitoring.models import Alert, AlertMailLog, PendingDigest, Severity

log = logging.getLogger(__name__)

IMMEDIATE = (Severity.CRITICAL, Severity.HIGH)
OWNER_RULES = ("success_after_attack", "new_country", "impossible_travel")
MAX_SAMPLES = 10


def recipients_for(alert: Alert) -> list[str]:
    from mailadmin.staff.models import Role, User

    emails = set(User.objects.filter(is_active=True, role=Role.SUPERADMIN).values_list("email", flat=True))
    if alert.domain_name:
        emails |= set(
            User.objects.filter(is_active=True, role=Role.DOMAIN_ADMIN, domains__name__iexact=alert.domain_name)
            .values_list("email", flat=True)
            .distinct()
        )
    return sorted(emails)


def alert_raised(alert_id: int, alert: Alert | None = None, immediate: list | None = None) -> None:
    """Called (after commit) when an alert opens or its severity rises (`alert`: read already).
    `immediate`: collects the ids to mail at once instead of publishing a task for each."""
    if alert is None:
        alert = Alert.objects.filter(pk=alert_id).first()
    if alert is None:
        return
    if alert.severity in IMMEDIATE:
        if immediate is not None:
            immediate.append(alert_id)
        else:
            from mailadmin.monitoring.tasks import send_alert_email

            send_alert_email.delay(alert_id)
    else:
        digest = "hourly" if alert.severity == Severity.MEDIUM else "daily"
        for email in recipients_for(alert):
            _queue_digest(email, alert, digest)
    if settings.MONITORING_OWNER_NOTICES and alert.rule in OWNER_RULES:
        from mailadmin.monitoring.tasks import send_owner_notice

        send_owner_notice.delay(alert_id)


def alerts_raised(alert_ids: list[int]) -> None:
    """alert_raised for each of these (in order, repeats too), the alerts read in one query, and
    one task that mails the immediate ones at once, in order (an alert storm published thousands,
    each a task for the worker of a small installation to run between ingest batches)."""
    # Only what alert_raised reads (and the digest rows' foreign key): not the evidence of each.
    alerts = Alert.objects.only("id", "rule", "severity", "domain_name").in_bulk(set(alert_ids))
    immediate = []
    for alert_id in alert_ids:
        if alert_id in alerts:
            alert_raised(alert_id, alerts[alert_id], immediate)
    if immediate:
        from mailadmin.monitoring.tasks import send_alert_emails

        send_alert_emails.delay(immediate)


def _queue_digest(email, alert, digest, now=None):
    with contextlib.suppress(IntegrityError):
        PendingDigest.objects.get_or_create(
            recipient=email, alert=alert, digest=digest, defaults={"queued_at": now or timezone.now()}
        )


def sent_last_hour(email: str, now) -> int:
    return AlertMailLog.objects.filter(recipient=email, sent_at__gt=now - dt.timedelta(hours=1)).count()


def _context(alert: Alert) -> dict:
    from mailadmin.monitoring.detectors import RULE_TITLES

    entity = alert.entity or {}
    return {
        "alert": alert,
        "title": RULE_TITLES.get(alert.rule, alert.rule),
        "entity_items": [(k, entity[k]) for k in ("username", "ip", "prefix", "country", "asn") if entity.get(k)],
        "samples": (alert.evidence or [])[:MAX_SAMPLES],
        "window": _window_text(alert.window_seconds),
        "url": f"{settings.SITE_URL}{alert.get_absolute_url()}",
        "site_url": settings.SITE_URL,
    }


def _window_text(seconds: int) -> str:
    if seconds >= 86400 and seconds % 86400 == 0:
        return f"{seconds // 86400} day(s)"
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds // 3600} hour(s)"
    return f"{max(seconds // 60, 1)} minutes"


def _send(email: str, template: str, context: dict, kind: str, alert_ids: list[int], now) -> None:
    subject = " ".join(render_to_string(f"monitoring/email/{template}_subject.txt", context).split())[:255]
    text = render_to_string(f"monitoring/email/{template}.txt", context)
    html = render_to_string(f"monitoring/email/{template}.html", context)
    message = EmailMultiAlternatives(subject, text, settings.DEFAULT_FROM_EMAIL, [email])
    message.attach_alternative(html, "text/html")
    message.send()
    AlertMailLog.objects.create(recipient=email, kind=kind, sent_at=now, alert_ids=alert_ids, subject=subject)


def send_immediate(alert_id: int, now=None) -> int:
    """Mail a high/critical alert to each recipient, or fold it into the digest when throttled."""
    now = now or timezone.now()
    alert = Alert.objects.filter(pk=alert_id).first()
    if alert is None:
        return 0
    context = _context(alert)
    limit = settings.MONITORING_ALERT_MAILS_PER_HOUR
    sent = 0
    for email in recipients_for(alert):
        if _already_mailed(email, alert, now):
            continue  # task redelivered: this recipient has it already
        if sent_last_hour(email, now) >= limit:
            _queue_digest(email, alert, "hourly", now)
            continue
        _send(email, "alert", context, AlertMailLog.Kind.IMMEDIATE, [alert.pk], now)
        sent += 1
    Alert.objects.filter(pk=alert.pk).update(notified_at=now)
    return sent


def _already_mailed(email, alert, now) -> bool:
    logs = AlertMailLog.objects.filter(
        recipient=email, kind=AlertMailLog.Kind.IMMEDIATE, sent_at__gte=now - dt.timedelta(days=1)
    ).values_list("alert_ids", "subject")
    return any(alert.pk in ids and alert.severity in subject.lower() for ids, subject in logs)


def send_digests(kind: str, now=None) -> int:
    """One digest per recipient with everything queued for it; throttled recipients wait."""
    now = now or timezone.now()
    kinds = ["hourly"] if kind == "hourly" else ["daily"]
    limit = settings.MONITORING_ALERT_MAILS_PER_HOUR
    sent = 0
    recipients = PendingDigest.objects.filter(digest__in=kinds).values_list("recipient", flat=True).distinct()
    for email in sorted(set(recipients)):
        if sent_last_hour(email, now) >= limit:
            continue  # stays queued for the next digest
        pending = list(
            PendingDigest.objects.filter(recipient=email, digest__in=kinds).select_related("alert").order_by("alert_id")
        )
        alerts = [p.alert for p in pending]
        if not alerts:
            continue
        alerts.sort(key=lambda a: ({"critical": 0, "high": 1, "medium": 2, "low": 3}[a.severity], a.first_seen))
        context = {
            "kind": kind,
            "items": [_context(a) for a in alerts],
            "count": len(alerts),
            "site_url": settings.SITE_URL,
        }
        _send(email, "digest", context, kind, [a.pk for a in alerts], now)
        PendingDigest.objects.filter(pk__in=[p.pk for p in pending]).delete()
        Alert.objects.filter(pk__in=[a.pk for a in alerts]).update(digested_at=now)
        sent += 1
    return sent


def send_owner_notice(alert_id: int, now=None) -> bool:
    """'New sign-in from …' to the mailbox owner, at most one a day."""
    now = now or timezone.now()
    alert = Alert.objects.filter(pk=alert_id).first()
    if alert is None or not (alert.entity or {}).get("username"):
        return False
    owner = alert.entity["username"]
    if AlertMailLog.objects.filter(
        recipient=owner, kind=AlertMailLog.Kind.OWNER, sent_at__gt=now - dt.timedelta(days=1)
    ).exists():
        return False
    _send(owner, "owner", _context(alert), AlertMailLog.Kind.OWNER, [alert.pk], now)
    return True
