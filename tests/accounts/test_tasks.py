from datetime import timedelta

from django.core import mail
from django.utils import timezone

from mailadmin.accounts import credentials
from mailadmin.accounts.models import Mailbox, PasswordPolicy
from mailadmin.accounts.tasks import notify_expiring_passwords

NEW_PASSWORD = "quartz-Lantern-meadow-47-oboe"


def test_expiring_password_notice_sent_once(settings, mailbox_a, make_mailbox, domain_a):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    fresh = make_mailbox(domain_a, "fresh")
    expired = make_mailbox(domain_a, "expired")
    assert notify_expiring_passwords() == 0  # no maximum age: nothing to do
    policy = PasswordPolicy.global_policy()
    policy.max_age_days = 90
    policy.save()
    now = timezone.now()
    Mailbox.objects.filter(pk=mailbox_a.pk).update(password_changed_at=now - timedelta(days=85))
    Mailbox.objects.filter(pk=fresh.pk).update(password_changed_at=now - timedelta(days=10))
    Mailbox.objects.filter(pk=expired.pk).update(password_changed_at=now - timedelta(days=100))
    assert notify_expiring_passwords() == 1
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == ["alice@a.example"] and "expires in 4 days" in message.subject
    assert "alice@a.example" in message.body and "alice@a.example" in message.alternatives[0][0]
    assert notify_expiring_passwords() == 0  # once per password
    # A new password resets the notice.
    credentials.set_password(Mailbox.objects.get(pk=mailbox_a.pk), NEW_PASSWORD)
    Mailbox.objects.filter(pk=mailbox_a.pk).update(password_changed_at=now - timedelta(days=88))
    assert notify_expiring_passwords() == 1


def test_task_is_registered_and_scheduled(settings):
    from mailadmin.celery import app

    assert "accounts.notify_expiring_passwords" in app.tasks
    entries = [e["task"] for e in settings.CELERY_BEAT_SCHEDULE.values()]
    assert "accounts.notify_expiring_passwords" in entries
