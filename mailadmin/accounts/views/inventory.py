"""Credential inventory: which mailboxes hold a CRAM-MD5 secret, which app
passwords have been unused for 90 days, which passwords expire soon. Read-only, scoped."""

from datetime import timedelta

from django.contrib.auth.decorators import login_required
from django.db.models import Q
from django.shortcuts import render
from django.utils import timezone

from mailadmin.accounts.models import AppPassword, Domain, Mailbox, PasswordPolicy

UNUSED_DAYS = 90
EXPIRY_WINDOW_DAYS = 14
LIMIT = 500


def expiring_mailboxes(domains, now, window_days):
    """(mailbox, expires_at) for passwords expiring within window_days (or expired), per domain policy."""
    found = []
    for domain in domains:
        policy = PasswordPolicy.for_domain(domain)
        if not policy.max_age_days:
            continue
        age = timedelta(days=policy.max_age_days)
        threshold = now + timedelta(days=window_days) - age
        rows = (
            Mailbox.objects.filter(domain=domain, state=Mailbox.State.ACTIVE)
            .filter(Q(password_changed_at__lte=threshold) | Q(password_changed_at__isnull=True, created__lte=threshold))
            .select_related("domain")[:LIMIT]
        )
        for mailbox in rows:
            found.append((mailbox, (mailbox.password_changed_at or mailbox.created) + age))
    return sorted(found, key=lambda pair: pair[1])


@login_required
def inventory(request):
    now = timezone.now()
    domains = Domain.objects.visible_to(request.user)
    cram = Mailbox.objects.visible_to(request.user).exclude(cram_md5_state="").select_related("domain")
    cutoff = now - timedelta(days=UNUSED_DAYS)
    unused = (
        AppPassword.objects.visible_to(request.user)
        .usable(now)
        .filter(Q(last_used_at__lt=cutoff) | Q(last_used_at__isnull=True, created__lt=cutoff))
        .select_related("mailbox__domain")
    )
    context = {
        "cram": cram[:LIMIT],
        "cram_count": cram.count(),
        "unused": unused[:LIMIT],
        "unused_count": unused.count(),
        "unused_days": UNUSED_DAYS,
        "expiring": expiring_mailboxes(domains, now, EXPIRY_WINDOW_DAYS),
        "expiry_window": EXPIRY_WINDOW_DAYS,
        "now": now,
    }
    return render(request, "accounts/mailboxes/inventory.html", context)
