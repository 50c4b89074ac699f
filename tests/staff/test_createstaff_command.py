import pytest
from allauth.account.models import EmailAddress
from django.core.management import CommandError, call_command

from mailadmin.staff.models import AuditEntry, Role, User


def run(*args):
    from io import StringIO

    out = StringIO()
    call_command("createstaff", *args, stdout=out)
    return out.getvalue()


@pytest.mark.embedded
def test_it_creates_a_domain_admin_and_prints_a_working_password(domain_a):
    out = run("--email", "New@Example.org", "--role", "domain_admin", "--domain", "A.example")
    password = out.split("One-time password (shown only now): ")[1].split()[0]
    user = User.objects.get(email="new@example.org")
    assert user.role == Role.DOMAIN_ADMIN and list(user.domains.all()) == [domain_a]
    assert user.check_password(password)
    assert EmailAddress.objects.get(user=user).verified
    entry = AuditEntry.objects.get()
    assert entry.action == "create" and entry.actor_email.startswith("system")
    assert password not in str(entry.changes)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--email", "x@example.org", "--role", "king"], "unknown role"),
        (["--email", "x@example.org", "--role", "domain_admin", "--domain", "nope.example"], "unknown domain"),
        (["--email", "x@example.org", "--role", "domain_admin", "--domain", "bad..name"], "not a valid domain"),
        (["--email", "x@example.org", "--role", "domain_admin"], "at least one --domain"),
        (["--email", "not-an-email", "--role", "auditor"], "not a valid email"),
        (["--email", "ADMIN-A@staff.example", "--role", "auditor"], "already exists"),
    ],
)
def test_clear_errors(admin_a, args, message):
    with pytest.raises(CommandError, match=message):
        run(*args)
    assert User.objects.count() == 1
