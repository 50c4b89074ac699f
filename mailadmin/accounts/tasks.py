"""Accounts' periodic work (Celery beat: settings CELERY_BEAT_SCHEDULE)."""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.core.mail import send_mail
from django.db.models import Q
from django.template.loader import render_to_string
from django.utils import timezone

from mailadmin.accounts.models import Domain, Mailbox, PasswordPolicy

logger = logging.getLogger(__name__)


@shared_task(name="accounts.notify_expiring_passwords")
def notify_expiring_passwords() -> int:
    """Mail each mailbox whose password expires within PASSWORD_EXPIRY_NOTICE_DAYS
    (policy maximum age > 0), once per password. Each notice is claimed with a
    conditional UPDATE first, so two workers never both send it."""
    now = timezone.now()
    notice = timedelta(days=settings.PASSWORD_EXPIRY_NOTICE_DAYS)
    sent = 0
    for domain in Domain.objects.filter(is_active=True):
        policy = PasswordPolicy.for_domain(domain)
        if not policy.max_age_days:
            continue
        age = timedelta(days=policy.max_age_days)
        due = now + notice - age  # passwords changed before this expire within the notice period
        candidates = Mailbox.objects.filter(
            domain=domain, state=Mailbox.State.ACTIVE, expiry_notice_sent_at__isnull=True
        ).filter(Q(password_changed_at__lte=due) | Q(password_changed_at__isnull=True, created__lte=due))
        for mailbox in candidates.select_related("domain").iterator():
            expires = (mailbox.password_changed_at or mailbox.created) + age
            if expires <= now:
                continue  # already expired: the verifier refuses it; nothing to warn about
            if not Mailbox.objects.filter(pk=mailbox.pk, expiry_notice_sent_at__isnull=True).update(
                expiry_notice_sent_at=now
            ):
                continue
            context = {"mailbox": mailbox, "expires": expires, "days": max((expires - now).days, 0)}
            try:
                send_mail(
                    subject=render_to_string("accounts/emails/password_expiring_subject.txt", context).strip(),
                    message=render_to_string("accounts/emails/password_expiring.txt", context),
                    html_message=render_to_string("accounts/emails/password_expiring.html", context),
                    from_email=None,
                    recipient_list=[mailbox.unicode_address],
                )
            except Exception:
                # Give the notice back so the next run retries it.
                Mailbox.objects.filter(pk=mailbox.pk).update(expiry_notice_sent_at=None)
                logger.exception("could not send the password expiry notice to %s", mailbox.address)
                continue
            sent += 1
    return sent
