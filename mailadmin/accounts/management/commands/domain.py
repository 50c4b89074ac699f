"""manage.py domain add|list|disable|enable NAME — for scripts; audited as system changes."""

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from mailadmin.accounts.models import Domain
from mailadmin.accounts.validators import normalize_domain_name
from mailadmin.staff import audit

ACTOR = "system (manage.py domain)"


class Command(BaseCommand):
    help = "Add, list, disable or enable mail domains."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        add = sub.add_parser("add", help="add a domain")
        add.add_argument("name")
        add.add_argument("--description", default="")
        add.add_argument("--max-mailboxes", type=int, default=0)
        add.add_argument("--send-rate", type=int, default=200, help="default messages per mailbox per hour")
        sub.add_parser("list", help="list domains")
        for action in ("disable", "enable"):
            sub.add_parser(action, help=f"{action} a domain").add_argument("name")

    def handle(self, *args, action, **options):
        getattr(self, f"_{action}")(**options)

    def _name(self, name):
        try:
            return normalize_domain_name(name)
        except ValidationError as exc:
            raise CommandError(exc.messages[0]) from None

    def _get(self, name):
        domain = Domain.objects.filter(name__iexact=self._name(name)).first()
        if domain is None:
            raise CommandError(f"unknown domain '{name}'")
        return domain

    def _add(self, name, description, max_mailboxes, send_rate, **options):
        a_label = self._name(name)
        if max_mailboxes < 0 or send_rate < 1:
            raise CommandError("--max-mailboxes must be >= 0 and --send-rate >= 1")
        if Domain.objects.filter(name__iexact=a_label).exists():
            raise CommandError(f"the domain {a_label} already exists")
        with transaction.atomic():
            domain = Domain.objects.create(
                name=a_label, description=description, max_mailboxes=max_mailboxes, default_send_rate=send_rate
            )
            audit.record(None, "create", domain, changes=audit.diff(None, audit.snapshot(domain)), actor_email=ACTOR)
        self.stdout.write(f"Added {domain.unicode_name} ({domain.name})")

    def _list(self, **options):
        for domain in Domain.objects.all():
            status = "active" if domain.is_active else "disabled"
            self.stdout.write(f"{domain.name}\t{domain.unicode_name}\t{status}\tmax_mailboxes={domain.max_mailboxes}")

    def _set_active(self, name, active):
        domain = self._get(name)
        if domain.is_active != active:
            with transaction.atomic():
                before = audit.snapshot(domain)
                domain.is_active = active
                domain.save(update_fields=["is_active", "updated"])
                changes = audit.diff(before, audit.snapshot(domain))
                audit.record(None, "update", domain, changes=changes, actor_email=ACTOR)
        self.stdout.write(f"{domain.unicode_name} is {'active' if active else 'disabled'}")

    def _disable(self, name, **options):
        self._set_active(name, False)

    def _enable(self, name, **options):
        self._set_active(name, True)
