"""Mailboxes from scripts, with the same rules as the web pages.

    manage.py mailbox add alice@example.org [--display-name "Alice"] [--send-rate 100] [--password-stdin]
    manage.py mailbox passwd alice@example.org [--password-stdin]
    manage.py mailbox suspend alice@example.org --reason "phished"   (--reactivate to undo)
    manage.py mailbox list [--domain example.org] [--state active]
    manage.py mailbox apppassword alice@example.org --name "Thunderbird" [--expires-days 90] [--networks 192.0.2.0/24]
    manage.py mailbox apppassword alice@example.org --revoke ID

Without --password-stdin a strong password is generated and printed once.
The password policy applies; every failed rule is printed. Changes are audited.
"""

import sys
from datetime import timedelta

from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from mailadmin.accounts import credentials, mailboxes
from mailadmin.accounts.models import AppPassword, Mailbox
from mailadmin.staff import audit

ACTOR = "manage.py mailbox"


class Command(BaseCommand):
    help = "Add mailboxes, set passwords, suspend, list, create app passwords."
    stealth_options = ("stdin",)

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        add = sub.add_parser("add", help="Create a mailbox.")
        add.add_argument("address")
        add.add_argument("--display-name", default="")
        add.add_argument("--send-rate", type=int, default=None, help="Messages per hour (default: the domain's).")
        add.add_argument("--password-stdin", action="store_true", help="Read the password from standard input.")
        passwd = sub.add_parser("passwd", help="Set a new password.")
        passwd.add_argument("address")
        passwd.add_argument("--password-stdin", action="store_true", help="Read the password from standard input.")
        suspend = sub.add_parser("suspend", help="Suspend (or --reactivate) a mailbox.")
        suspend.add_argument("address")
        suspend.add_argument("--reason", default="")
        suspend.add_argument("--reactivate", action="store_true")
        listing = sub.add_parser("list", help="List mailboxes.")
        listing.add_argument("--domain")
        listing.add_argument("--state", choices=Mailbox.State.values)
        app = sub.add_parser("apppassword", help="Create (or --revoke) an app password.")
        app.add_argument("address")
        app.add_argument("--name")
        app.add_argument("--expires-days", type=int)
        app.add_argument("--networks", default="", help="Comma-separated CIDR list.")
        app.add_argument("--revoke", type=int, metavar="ID")

    def handle(self, *args, **options):
        self._stdin = options.get("stdin") or sys.stdin
        try:
            getattr(self, f"_{options['action']}")(options)
        except ValidationError as exc:
            raise CommandError("\n".join(exc.messages)) from None
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from None

    # --- helpers ---

    def _mailbox(self, address) -> Mailbox:
        local_part, domain_name = mailboxes.split_address(address)
        mailbox = (
            Mailbox.objects.select_related("domain")
            .filter(domain__name=domain_name, local_part__iexact=local_part)
            .first()
        )
        if mailbox is None:
            raise CommandError(f"No mailbox {address}.")
        return mailbox

    def _read_password(self, options) -> str | None:
        if not options.get("password_stdin"):
            return None
        password = self._stdin.readline().rstrip("\r\n")
        if not password:
            raise CommandError("No password on standard input.")
        return password

    # --- actions ---

    def _add(self, options):
        local_part, domain_name = mailboxes.split_address(options["address"])
        domain = mailboxes.find_domain(domain_name)
        if domain is None:
            raise CommandError(f"The domain {domain_name} does not exist (create it with manage.py domain).")
        mailbox, generated = mailboxes.create_mailbox(
            domain,
            local_part,
            password=self._read_password(options),
            display_name=options["display_name"],
            send_rate_per_hour=options["send_rate"],
        )
        audit.record(
            None,
            "create",
            mailbox,
            changes={**audit.diff(None, audit.snapshot(mailbox)), "password": 1},
            actor_email=ACTOR,
        )
        self.stdout.write(f"Created {mailbox.address}.")
        if generated:
            self.stdout.write(f"Password (shown once): {generated}")

    def _passwd(self, options):
        mailbox = self._mailbox(options["address"])
        password = self._read_password(options)
        generated = None
        if password is None:
            generated = password = credentials.generate_password(mailbox)
        credentials.set_password(mailbox, password)
        audit.record(None, "password_change", mailbox, changes={"password": 1}, actor_email=ACTOR)
        self.stdout.write(f"New password set for {mailbox.address}.")
        if generated:
            self.stdout.write(f"Password (shown once): {generated}")

    def _suspend(self, options):
        mailbox = self._mailbox(options["address"])
        before = audit.snapshot(mailbox)
        if options["reactivate"]:
            mailboxes.reactivate(mailbox)
        else:
            mailboxes.suspend(mailbox, options["reason"])
        audit.record(None, "update", mailbox, changes=audit.diff(before, audit.snapshot(mailbox)), actor_email=ACTOR)
        self.stdout.write(f"{mailbox.address} is now {mailbox.state}.")

    def _list(self, options):
        queryset = Mailbox.objects.select_related("domain")
        if options.get("domain"):
            queryset = queryset.filter(domain__name=mailboxes.domain_a_label(options["domain"]))
        if options.get("state"):
            queryset = queryset.filter(state=options["state"])
        for mailbox in queryset.iterator():
            last = mailbox.last_login_at.isoformat(timespec="seconds") if mailbox.last_login_at else "never"
            self.stdout.write(f"{mailbox.address}\t{mailbox.state}\t{mailbox.effective_send_rate}/h\t{last}")

    def _apppassword(self, options):
        mailbox = self._mailbox(options["address"])
        if options.get("revoke"):
            app = AppPassword.objects.filter(mailbox=mailbox, pk=options["revoke"]).first()
            if app is None:
                raise CommandError(f"{mailbox.address} has no app password {options['revoke']}.")
            if credentials.revoke_app_password(app):
                audit.record(
                    None, "update", app, changes={"revoked_at": [None, audit._plain(app.revoked_at)]}, actor_email=ACTOR
                )
            self.stdout.write(f"Revoked app password {app.pk} ({app.name}).")
            return
        if not options.get("name"):
            raise CommandError("Give the app password a --name (which client uses it).")
        expires_at = None
        if options.get("expires_days") is not None:
            if options["expires_days"] < 1:
                raise CommandError("--expires-days must be at least 1.")
            expires_at = timezone.now() + timedelta(days=options["expires_days"])
        app, secret = credentials.create_app_password(
            mailbox, options["name"], expires_at=expires_at, allowed_networks=options["networks"]
        )
        audit.record(
            None,
            "create",
            app,
            object_kind="apppassword",
            changes={"name": [None, app.name], "password": 1},
            actor_email=ACTOR,
        )
        self.stdout.write(f"App password {app.pk} ({app.name}) for {mailbox.address} (shown once): {secret}")
