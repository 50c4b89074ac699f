"""manage.py createstaff --email E --role R [--domain D ...]: prints a one-time password."""

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.core.validators import validate_email
from django.db import transaction

from mailadmin.accounts.models import Domain
from mailadmin.accounts.validators import normalize_domain_name
from mailadmin.staff import audit
from mailadmin.staff.accounts import create_staff
from mailadmin.staff.models import Role, User


class Command(BaseCommand):
    help = "Create a staff user with a verified email and print a one-time password (MFA set-up at first login)."

    def add_arguments(self, parser):
        parser.add_argument("--email", required=True)
        parser.add_argument("--role", required=True, help=f"one of: {', '.join(Role.values)}")
        parser.add_argument("--domain", action="append", default=[], help="a domain they manage/read (repeatable)")
        parser.add_argument("--all-domains", action="store_true", help="auditors: read every domain")

    def handle(self, *args, email, role, domain, all_domains, **options):
        email = email.strip().lower()
        try:
            validate_email(email)
        except ValidationError:
            raise CommandError(f"'{email}' is not a valid email address") from None
        if role not in Role.values:
            raise CommandError(f"unknown role '{role}'; use one of: {', '.join(Role.values)}")
        if User.objects.filter(email__iexact=email).exists():
            raise CommandError(f"a staff user with email {email} already exists")
        domains = [self._domain(name) for name in domain]
        if role == Role.DOMAIN_ADMIN and not domains:
            raise CommandError("a domain admin needs at least one --domain")
        with transaction.atomic():
            user, password = create_staff(email, role=role, domains=domains)
            if all_domains and role == Role.AUDITOR:
                user.all_domains = True
                user.save(update_fields=["all_domains"])
            changes = audit.diff(None, {"email": user.email, "role": role, "domains": sorted(d.name for d in domains)})
            audit.record(None, "create", user, changes=changes, actor_email="system (manage.py createstaff)")
        self.stdout.write(f"Created {user.get_role_display().lower()} {user.email}")
        self.stdout.write(f"One-time password (shown only now): {password}")
        self.stdout.write("Two-factor authentication is set up at first login.")

    @staticmethod
    def _domain(name):
        try:
            a_label = normalize_domain_name(name)
        except ValidationError as exc:
            raise CommandError(exc.messages[0]) from None
        found = Domain.objects.filter(name__iexact=a_label).first()
        if found is None:
            raise CommandError(f"unknown domain '{name}' (create it with: manage.py domain add {name})")
        return found
