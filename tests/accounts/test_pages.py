"""Mailbox pages: role scoping on every page (owner OK, other domain's admin
404, auditor reads but writes 403), audit rows without secrets, shown-once secrets."""

import re

import pytest
from django.urls import reverse

from mailadmin.accounts import credentials
from mailadmin.accounts.models import AppPassword, Mailbox, PasswordPolicy
from mailadmin.accounts.verify import verify_password
from mailadmin.staff.models import AuditEntry

from .conftest import GOOD_PASSWORD

NEW_PASSWORD = "quartz-Lantern-meadow-47-oboe"


@pytest.fixture
def alias_and_app(mailbox_a):
    from mailadmin.accounts.mailboxes import add_alias

    alias = add_alias(mailbox_a, "sales")
    app, _ = credentials.create_app_password(mailbox_a, "phone")
    return alias, app


def _reads(mb):
    return [
        reverse("mailboxes:detail", args=[mb.pk]),
        reverse("mailboxes:edit", args=[mb.pk]),
        reverse("mailboxes:delete", args=[mb.pk]),
        reverse("mailboxes:reset_password", args=[mb.pk]),
        reverse("mailboxes:app_password_create", args=[mb.pk]),
    ]


def _writes(mb, alias, app):
    return [
        (reverse("mailboxes:edit", args=[mb.pk]), {"display_name": "X"}),
        (reverse("mailboxes:suspend", args=[mb.pk]), {"reason": "x"}),
        (reverse("mailboxes:reactivate", args=[mb.pk]), {}),
        (reverse("mailboxes:disable", args=[mb.pk]), {}),
        (reverse("mailboxes:reset_password", args=[mb.pk]), {"password_mode": "generate"}),
        (reverse("mailboxes:alias_add", args=[mb.pk]), {"address": "info"}),
        (reverse("mailboxes:alias_remove", args=[mb.pk, alias.pk]), {}),
        (reverse("mailboxes:app_password_create", args=[mb.pk]), {"name": "laptop"}),
        (reverse("mailboxes:app_password_revoke", args=[mb.pk, app.pk]), {}),
        (reverse("mailboxes:delete", args=[mb.pk]), {"confirm_address": mb.address}),
    ]


def test_other_domains_admin_gets_404_everywhere(client_b, mailbox_a, alias_and_app):
    for url in _reads(mailbox_a):
        assert client_b.get(url).status_code == 404, url
    for url, data in _writes(mailbox_a, *alias_and_app):
        assert client_b.post(url, data).status_code == 404, url
    assert Mailbox.objects.filter(pk=mailbox_a.pk, state="active").exists()
    # Lists and exports leave the other domain's mailboxes out.
    assert "alice" not in client_b.get(reverse("mailboxes:list")).content.decode()
    assert client_b.get(reverse("mailboxes:list") + f"?domain={mailbox_a.domain_id}").status_code == 404
    assert "alice" not in b"".join(client_b.get(reverse("mailboxes:csv_export")).streaming_content).decode()
    assert client_b.get(reverse("mailboxes:domain_policy", args=[mailbox_a.domain_id])).status_code == 404


def test_auditor_reads_but_cannot_write(auditor_client, mailbox_a, alias_and_app):
    assert auditor_client.get(reverse("mailboxes:detail", args=[mailbox_a.pk])).status_code == 200
    assert auditor_client.get(reverse("mailboxes:list")).status_code == 200
    assert auditor_client.get(reverse("mailboxes:inventory")).status_code == 200
    assert auditor_client.get(reverse("mailboxes:policy")).status_code == 200
    for url, data in _writes(mailbox_a, *alias_and_app):
        assert auditor_client.post(url, data).status_code == 403, url
    for url in (reverse("mailboxes:create"), reverse("mailboxes:csv_import")):
        assert auditor_client.get(url).status_code == 403
    assert auditor_client.post(reverse("mailboxes:policy"), {"min_length": 8}).status_code == 403
    assert Mailbox.objects.filter(pk=mailbox_a.pk, state="active", display_name="").exists()
    assert AppPassword.objects.filter(revoked_at__isnull=True).count() == 1


def test_owner_can_do_everything(client_a, mailbox_a, alias_and_app):
    for name in ("list", "create", "inventory", "policy", "csv_import", "csv_export"):
        assert client_a.get(reverse(f"mailboxes:{name}")).status_code == 200, name
    assert client_a.get(reverse("mailboxes:domain_policy", args=[mailbox_a.domain_id])).status_code == 200
    for url in _reads(mailbox_a):
        assert client_a.get(url).status_code == 200, url
    for url, data in _writes(mailbox_a, *alias_and_app):
        assert client_a.post(url, data).status_code in (200, 302), url
    assert not Mailbox.objects.filter(pk=mailbox_a.pk).exists()


def test_domain_admin_cannot_edit_policy(client_a, domain_a):
    assert client_a.get(reverse("mailboxes:policy")).status_code == 200
    assert client_a.post(reverse("mailboxes:policy"), {"min_length": 8}).status_code == 403
    assert client_a.post(reverse("mailboxes:domain_policy", args=[domain_a.pk]), {"min_length": 8}).status_code == 403


@pytest.mark.embedded
def test_create_with_generated_password_shown_once(client_a, domain_a):
    response = client_a.post(
        reverse("mailboxes:create"), {"domain": domain_a.pk, "local_part": "carol", "password_mode": "generate"}
    )
    assert response.status_code == 200 and "no-store" in response["Cache-Control"]
    password = re.search(r'id="shown-secret">([^<]+)<', response.content.decode()).group(1)
    assert verify_password("carol@a.example", password).ok
    entry = AuditEntry.objects.get(object_kind="mailbox", action="create")
    assert password not in str(entry.changes) and entry.changes["password"] == [None, "(changed)"]


def test_create_form_names_every_failed_rule(client_a, domain_a):
    response = client_a.post(
        reverse("mailboxes:create"),
        {
            "domain": domain_a.pk,
            "local_part": "carol",
            "password_mode": "set",
            "password": "carol",
            "password_confirm": "carol",
        },
    )
    body = response.content.decode()
    assert "too short" in body and "part of the mail address" in body and "too easy to guess" in body
    assert not Mailbox.objects.filter(local_part="carol").exists()


def test_create_other_domain_refused(client_a, domain_b):
    response = client_a.post(
        reverse("mailboxes:create"), {"domain": domain_b.pk, "local_part": "x", "password_mode": "generate"}
    )
    assert response.status_code == 200 and "Select a valid choice" in response.content.decode()
    assert not Mailbox.objects.filter(domain=domain_b).exists()


def test_create_over_domain_limit(client_a, domain_a, mailbox_a):
    domain_a.max_mailboxes = 1
    domain_a.save()
    response = client_a.post(
        reverse("mailboxes:create"), {"domain": domain_a.pk, "local_part": "two", "password_mode": "generate"}
    )
    assert "limited to 1" in response.content.decode()


def test_reset_password_set_and_history(client_a, mailbox_a):
    url = reverse("mailboxes:reset_password", args=[mailbox_a.pk])
    response = client_a.post(url, {"password_mode": "set", "password": NEW_PASSWORD, "password_confirm": NEW_PASSWORD})
    assert "The password you entered is set" in response.content.decode()
    assert verify_password("alice@a.example", NEW_PASSWORD).ok
    response = client_a.post(
        url, {"password_mode": "set", "password": GOOD_PASSWORD, "password_confirm": GOOD_PASSWORD}
    )
    assert "used recently" in response.content.decode()
    assert AuditEntry.objects.filter(action="password_change").count() == 1
    assert NEW_PASSWORD not in str(list(AuditEntry.objects.values_list("changes", flat=True)))


def test_app_password_create_and_revoke_page(client_a, mailbox_a):
    response = client_a.post(
        reverse("mailboxes:app_password_create", args=[mailbox_a.pk]),
        {"name": "Thunderbird at home", "allowed_networks": "192.0.2.0/24"},
    )
    secret = re.search(r'id="shown-secret">([^<]+)<', response.content.decode()).group(1)
    assert verify_password("alice@a.example", secret, client_ip="192.0.2.1").ok
    app = AppPassword.objects.get()
    detail = client_a.get(reverse("mailboxes:detail", args=[mailbox_a.pk])).content.decode()
    assert "Thunderbird at home" in detail and secret not in detail
    client_a.post(reverse("mailboxes:app_password_revoke", args=[mailbox_a.pk, app.pk]))
    assert verify_password("alice@a.example", secret, client_ip="192.0.2.1").reason == "bad_credentials"
    bad = client_a.post(
        reverse("mailboxes:app_password_create", args=[mailbox_a.pk]), {"name": "x", "allowed_networks": "nonsense"}
    )
    assert "is not an IP network" in bad.content.decode()


def test_suspend_needs_reason_and_is_audited(client_a, mailbox_a):
    client_a.post(reverse("mailboxes:suspend", args=[mailbox_a.pk]), {"reason": ""})
    assert Mailbox.objects.get(pk=mailbox_a.pk).state == "active"
    client_a.post(reverse("mailboxes:suspend", args=[mailbox_a.pk]), {"reason": "sending spam"})
    mailbox_a.refresh_from_db()
    assert mailbox_a.state == "suspended" and mailbox_a.suspend_reason == "sending spam"
    entry = AuditEntry.objects.filter(object_kind="mailbox", action="update").latest("id")
    assert entry.changes["state"] == ["active", "suspended"]


def test_delete_needs_typed_confirmation(client_a, mailbox_a):
    client_a.post(reverse("mailboxes:delete", args=[mailbox_a.pk]), {"confirm_address": "wrong"})
    assert Mailbox.objects.filter(pk=mailbox_a.pk).exists()


def test_list_search_filter_and_domain(client_a, make_mailbox, domain_a):
    make_mailbox(domain_a, "zed")
    carol = make_mailbox(domain_a, "carol")
    carol.state = "suspended"
    carol.save()
    body = client_a.get(reverse("mailboxes:list") + "?q=zed").content.decode()
    assert "zed@a.example" in body and "carol@" not in body
    body = client_a.get(reverse("mailboxes:list") + "?state=suspended").content.decode()
    assert "carol@a.example" in body and "zed@" not in body
    body = client_a.get(reverse("mailboxes:list") + f"?domain={domain_a.pk}").content.decode()
    assert "zed@a.example" in body and "carol@a.example" in body


def test_aliases_page_actions(client_a, mailbox_a, make_mailbox, domain_a):
    make_mailbox(domain_a, "bob")
    client_a.post(reverse("mailboxes:alias_add", args=[mailbox_a.pk]), {"address": "bob"})
    assert not mailbox_a.aliases.exists()
    client_a.post(reverse("mailboxes:alias_add", args=[mailbox_a.pk]), {"address": "x@b.example"})
    assert not mailbox_a.aliases.exists()
    client_a.post(reverse("mailboxes:alias_add", args=[mailbox_a.pk]), {"address": "info"})
    assert mailbox_a.aliases.get().address == "info@a.example"


def test_superadmin_edits_global_and_domain_policy(super_client, domain_a):
    data = {
        "min_length": 14,
        "max_length": 256,
        "min_zxcvbn_score": 3,
        "history_count": 5,
        "max_age_days": 0,
        "reject_common": "on",
        "reject_address_parts": "on",
    }
    assert super_client.post(reverse("mailboxes:policy"), data).status_code == 302
    assert PasswordPolicy.global_policy().min_length == 14
    data["min_length"] = 20
    assert super_client.post(reverse("mailboxes:domain_policy", args=[domain_a.pk]), data).status_code == 302
    assert PasswordPolicy.for_domain(domain_a).min_length == 20
    assert PasswordPolicy.global_policy().min_length == 14
    super_client.post(reverse("mailboxes:domain_policy_remove", args=[domain_a.pk]))
    assert PasswordPolicy.for_domain(domain_a).min_length == 14


def test_password_feedback_endpoint(client_a, domain_a):
    response = client_a.post(
        reverse("mailboxes:password_feedback"), {"password": "alice", "domain": domain_a.pk, "local_part": "alice"}
    )
    body = response.content.decode()
    assert "too short" in body and "Strength" in body


def test_inventory_lists_cram_unused_and_expiring(client_a, domain_a, make_mailbox):
    from datetime import timedelta

    from django.utils import timezone

    domain_a.cram_md5_enabled = True
    domain_a.save()
    tim = make_mailbox(domain_a, "tim")
    app, _ = credentials.create_app_password(tim, "old phone")
    AppPassword.objects.filter(pk=app.pk).update(created=timezone.now() - timedelta(days=100))
    policy = PasswordPolicy.global_policy()
    policy.max_age_days = 90
    policy.save()
    Mailbox.objects.filter(pk=tim.pk).update(password_changed_at=timezone.now() - timedelta(days=85))
    body = client_a.get(reverse("mailboxes:inventory")).content.decode()
    assert body.count("tim@a.example") == 3 and "old phone" in body
