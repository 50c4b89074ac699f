"""Alert email: immediate for high/critical, digests for the rest, throttle with time travel."""

import datetime as dt

import pytest
from django.core import mail
from django.utils import timezone

from mailadmin.monitoring import notify
from mailadmin.monitoring.detectors import raise_alert
from mailadmin.monitoring.models import Alert, AlertMailLog, PendingDigest

NOW = timezone.now().replace(microsecond=0)

SAMPLE = {
    "ts": "2026-03-02T09:00:00+00:00",
    "ip": "203.0.113.66",
    "country": "NL",
    "asn": "ExampleNet",
    "username": "ann@a.example",
    "mechanism": "PLAIN",
    "tls": "TLSv1.3",
    "helo": "ylmf-pc",
    "result": "bad_credentials",
}


def make_alert(severity="high", user="ann@a.example", rule="account_bruteforce", n=0):
    alert, _ = raise_alert(
        rule,
        f"user:{n}{user}",
        {"username": user, "country": "NL", "asn": "ExampleNet"},
        severity=severity,
        ts=NOW,
        first_seen=NOW - dt.timedelta(minutes=5),
        count=12,
        window_seconds=3600,
        verdict=f"Account brute force: 12 different passwords tried against {user}",
        samples=[SAMPLE],
        domain_name=user.split("@")[1],
        notify=False,
    )
    return alert


@pytest.mark.django_db
def test_a_high_alert_mails_superadmins_and_the_domains_admins_at_once(superadmin, admin_a, admin_b, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    alert = make_alert("high")
    assert notify.send_immediate(alert.pk, now=NOW) == 2
    to = sorted(m.to[0] for m in mail.outbox)
    assert to == [admin_a.email, superadmin.email]  # not the admin of b.example
    message = mail.outbox[0]
    assert "HIGH" in message.subject and "Account brute force" in message.subject
    text = message.body
    html = message.alternatives[0][0]
    for part in (text, html):
        assert "ann@a.example" in part and "NL" in part and "ExampleNet" in part
        assert "203.0.113.66" in part and "ylmf-pc" in part and "TLSv1.3" in part
        assert f"/monitoring/alerts/{alert.pk}/" in part
        assert "pw_fp" not in part and "password=" not in part
    # redelivery of the task does not mail twice
    assert notify.send_immediate(alert.pk, now=NOW) == 0


@pytest.mark.django_db
def test_medium_goes_to_the_hourly_digest_and_low_to_the_daily(superadmin, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    medium = make_alert("medium", rule="new_country", n=1)
    low = make_alert("low", rule="new_asn", n=2)
    notify.alert_raised(medium.pk)
    notify.alert_raised(low.pk)
    assert mail.outbox == []
    assert notify.send_digests("hourly", now=NOW) == 1
    assert "1 alert" in mail.outbox[0].subject and "new country" in mail.outbox[0].body.lower()
    assert notify.send_digests("daily", now=NOW + dt.timedelta(hours=20)) == 1
    assert "new network" in mail.outbox[1].body.lower()
    assert not PendingDigest.objects.exists()


@pytest.mark.django_db
def test_at_most_twenty_mails_an_hour_the_rest_in_the_next_digest(superadmin, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    alerts = [make_alert("critical", user=f"u{i}@a.example", n=i) for i in range(25)]
    for a in alerts:
        notify.send_immediate(a.pk, now=NOW)
    assert len(mail.outbox) == 20
    assert PendingDigest.objects.filter(recipient=superadmin.email, digest="hourly").count() == 5
    # still throttled a minute later: the digest waits
    assert notify.send_digests("hourly", now=NOW + dt.timedelta(minutes=1)) == 0
    # an hour later the folded alerts arrive in one digest
    assert notify.send_digests("hourly", now=NOW + dt.timedelta(minutes=61)) == 1
    digest = mail.outbox[-1]
    assert "5 alerts" in digest.subject
    assert all(f"u{i}@a.example" in digest.body for i in range(20, 25))
    assert AlertMailLog.objects.filter(recipient=superadmin.email).count() == 21


@pytest.mark.django_db
def test_raising_an_alert_queues_its_mail_after_commit(superadmin, settings, django_capture_on_commit_callbacks):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.CELERY_TASK_ALWAYS_EAGER = True
    from mailadmin.celery import app

    app.conf.task_always_eager = True
    try:
        with django_capture_on_commit_callbacks(execute=True):
            alert, fresh = raise_alert(
                "ip_bruteforce",
                "ip:203.0.113.66",
                {"ip": "203.0.113.66"},
                severity="high",
                ts=NOW,
                first_seen=NOW,
                count=10,
                window_seconds=600,
                verdict="IP brute force",
                samples=[SAMPLE],
            )
        assert fresh
        assert [m.to for m in mail.outbox] == [[superadmin.email]]
        assert Alert.objects.get().notified_at is not None
    finally:
        app.conf.task_always_eager = False


@pytest.mark.django_db
def test_owner_notice_at_most_once_a_day(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    alert = make_alert("critical", rule="success_after_attack")
    assert notify.send_owner_notice(alert.pk, now=NOW)
    assert not notify.send_owner_notice(alert.pk, now=NOW + dt.timedelta(hours=5))
    assert notify.send_owner_notice(alert.pk, now=NOW + dt.timedelta(hours=25))
    assert mail.outbox[0].to == ["ann@a.example"] and "New sign-in" in mail.outbox[0].subject


@pytest.mark.django_db
def test_a_slices_immediate_alerts_go_out_in_one_task_each_mailed_at_once(superadmin, settings, monkeypatch):
    """alerts_raised publishes one send_alert_emails task for all its high/critical alerts (in order,
    repeats too) instead of one task each; running it mails each alert as send_alert_email would."""
    from mailadmin.monitoring import tasks

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    published = []
    monkeypatch.setattr(tasks.send_alert_emails, "delay", lambda ids: published.append(ids))
    monkeypatch.setattr(tasks.send_alert_email, "delay", lambda alert_id: pytest.fail("one task per alert"))
    high, critical, medium = make_alert("high", n=1), make_alert("critical", n=2), make_alert("medium", n=3)
    notify.alerts_raised([high.pk, medium.pk, critical.pk, high.pk])
    assert published == [[high.pk, critical.pk, high.pk]]
    assert PendingDigest.objects.filter(alert=medium).exists()
    assert tasks.send_alert_emails.run(published[0]) == 2  # the repeat finds it mailed already
    assert len(mail.outbox) == 2
