"""Alerts as plain JSON lines (export command and the dashboard's download)."""

import datetime as dt

ENTITY_FIELDS = ("ip", "prefix", "username", "asn", "country")


def iso(value):
    if value is None:
        return None
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def alert_line(alert) -> dict:
    entity = {k: alert.entity[k] for k in ENTITY_FIELDS if (alert.entity or {}).get(k) not in (None, "")}
    return {
        "id": alert.pk,
        "rule": alert.rule,
        "severity": alert.severity,
        "status": alert.status,
        "first_seen": iso(alert.first_seen),
        "last_seen": iso(alert.last_seen),
        "count": alert.count,
        "entity": entity,
        "entity_key": alert.entity_key,
        "domain": alert.domain_name or None,
        "verdict": alert.verdict,
        "action": alert.action or None,
        "action_expires_at": iso(alert.action_expires_at),
    }


def alert_lines(queryset):
    for alert in queryset.iterator(chunk_size=1000):
        yield alert_line(alert)
