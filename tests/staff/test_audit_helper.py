import pytest

from mailadmin.staff import audit
from mailadmin.staff.models import AuditEntry


def test_diff_keeps_only_changed_fields():
    assert audit.diff({"a": 1, "b": 2}, {"a": 1, "b": 3}) == {"b": [2, 3]}


def test_diff_never_contains_secret_values():
    changes = audit.diff({"password": "old-Secret-1"}, {"password": "new-Secret-2"})
    assert changes == {"password": [None, audit.REDACTED]}
    assert "Secret" not in str(changes)


@pytest.mark.embedded
def test_record_writes_a_structured_row(superadmin, domain_a):
    before = audit.snapshot(domain_a)
    domain_a.max_mailboxes = 5
    domain_a.save()
    audit.record(superadmin, "update", domain_a, changes=audit.diff(before, audit.snapshot(domain_a)))
    entry = AuditEntry.objects.get()
    assert entry.actor == superadmin
    assert entry.object_kind == "domain"
    assert entry.domain == domain_a
    assert entry.changes == {"max_mailboxes": [0, 5]}


def test_record_redacts_secret_changes_passed_by_callers(superadmin, domain_a):
    audit.record(superadmin, "update", domain_a, changes={"password": ["x", "hunter2-secret"]})
    assert AuditEntry.objects.get().changes == {"password": [None, audit.REDACTED]}
