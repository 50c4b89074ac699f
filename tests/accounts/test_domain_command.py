from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from mailadmin.accounts.models import Domain
from mailadmin.staff.models import AuditEntry


def run(*args):
    out = StringIO()
    call_command("domain", *args, stdout=out)
    return out.getvalue()


@pytest.mark.embedded
def test_add_list_disable_enable(db):
    assert "bücher.example" in run("add", "Bücher.Example", "--max-mailboxes", "5")
    domain = Domain.objects.get()
    assert domain.name == "xn--bcher-kva.example" and domain.max_mailboxes == 5
    assert "xn--bcher-kva.example\tbücher.example\tactive" in run("list")
    run("disable", "bücher.example")
    domain.refresh_from_db()
    assert not domain.is_active
    run("enable", "XN--BCHER-KVA.example")
    domain.refresh_from_db()
    assert domain.is_active
    assert list(AuditEntry.objects.order_by("id").values_list("action", flat=True)) == ["create", "update", "update"]


def test_errors_are_clear(domain_a):
    with pytest.raises(CommandError, match="already exists"):
        run("add", "A.EXAMPLE")
    with pytest.raises(CommandError, match="fully qualified"):
        run("add", "localhost")
    with pytest.raises(CommandError, match="unknown domain"):
        run("disable", "missing.example")
    assert Domain.objects.count() == 1
