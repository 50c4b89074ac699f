"""Creating staff users from code (commands, bootstrap), the one way."""

import secrets

from allauth.account.models import EmailAddress
from django.db import transaction

from mailadmin.staff.models import Role, User


def generate_password() -> str:
    return secrets.token_urlsafe(18)


@transaction.atomic
def create_staff(email: str, role: str = Role.DOMAIN_ADMIN, domains=(), password: str | None = None):
    """Create a staff user with a verified primary address (allauth refuses MFA
    enrolment otherwise). Returns (user, password)."""
    password = password or generate_password()
    user = User.objects.create_user(email=email, password=password, role=role)
    if domains:
        user.domains.set(domains)
    EmailAddress.objects.create(user=user, email=user.email, verified=True, primary=True)
    return user, password
