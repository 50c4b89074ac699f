import pytest
from allauth.account.models import EmailAddress
from django.test import Client
from django.urls import reverse

from mailadmin.staff.models import AuditEntry, Role, User


def url(name, *args):
    return reverse(f"staff:{name}", args=args)


@pytest.mark.embedded
def test_superadmin_lists_staff(super_client, admin_a, admin_b):
    response = super_client.get(url("staff_list"))
    assert response.status_code == 200
    assert b"admin-a@staff.example" in response.content and b"admin-b@staff.example" in response.content


@pytest.mark.parametrize("who", ["client_a", "auditor_client"])
def test_non_superadmins_get_403_everywhere(request, who, admin_b):
    client = request.getfixturevalue(who)
    assert client.get(url("staff_list")).status_code == 403
    assert client.get(url("staff_create")).status_code == 403
    assert client.post(url("staff_create"), {"email": "x@y.example", "role": "superadmin"}).status_code == 403
    assert client.post(url("staff_edit", admin_b.pk), {"role": "superadmin"}).status_code == 403
    assert client.post(url("staff_deactivate", admin_b.pk)).status_code == 403
    admin_b.refresh_from_db()
    assert admin_b.role == Role.DOMAIN_ADMIN and admin_b.is_active
    assert not User.objects.filter(email="x@y.example").exists()


def test_create_shows_a_one_time_password_that_works(super_client, domain_a):
    data = {"email": "New@Staff.example", "full_name": "New", "role": "domain_admin", "domains": [domain_a.pk]}
    response = super_client.post(url("staff_create"), data)
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    password = response.context["password"]
    user = User.objects.get(email="new@staff.example")
    assert list(user.domains.all()) == [domain_a]
    assert user.check_password(password)
    assert EmailAddress.objects.get(user=user).verified
    entry = AuditEntry.objects.get(action="create", object_kind="user")
    assert entry.changes["role"] == [None, "domain_admin"] and entry.changes["domains"] == [None, ["a.example"]]
    assert password not in str(entry.changes)
    # Not shown again anywhere.
    assert password.encode() not in super_client.get(url("staff_list")).content


def test_create_refuses_duplicate_email_and_domain_admin_without_domain(super_client, admin_a):
    response = super_client.post(url("staff_create"), {"email": "ADMIN-A@staff.example", "role": "auditor"})
    assert "already exists" in response.context["form"].errors["email"][0]
    response = super_client.post(url("staff_create"), {"email": "lonely@staff.example", "role": "domain_admin"})
    assert response.context["form"].errors["domains"]
    assert User.objects.count() == 2  # superadmin + admin_a


def test_role_change_is_audited_as_role_change(super_client, admin_a, domain_b):
    data = {"full_name": "", "role": "auditor", "domains": [domain_b.pk], "all_domains": ""}
    assert super_client.post(url("staff_edit", admin_a.pk), data).status_code == 302
    admin_a.refresh_from_db()
    assert admin_a.role == Role.AUDITOR
    entry = AuditEntry.objects.get(action="role_change")
    assert entry.object_id == str(admin_a.pk)
    assert entry.changes == {"domains": [["a.example"], ["b.example"]], "role": ["domain_admin", "auditor"]}


def test_name_change_is_a_plain_update(super_client, admin_a, domain_a):
    data = {"full_name": "Alice", "role": "domain_admin", "domains": [domain_a.pk]}
    super_client.post(url("staff_edit", admin_a.pk), data)
    assert AuditEntry.objects.get().action == "update"


def test_last_superadmin_cannot_be_demoted_or_deactivated(super_client, superadmin):
    response = super_client.post(url("staff_edit", superadmin.pk), {"role": "auditor"})
    assert response.context["form"].errors["role"]
    super_client.post(url("staff_deactivate", superadmin.pk))
    superadmin.refresh_from_db()
    assert superadmin.role == Role.SUPERADMIN and superadmin.is_active


def test_deactivate_ends_access_and_is_audited(super_client, admin_a):
    assert super_client.post(url("staff_deactivate", admin_a.pk)).status_code == 302
    admin_a.refresh_from_db()
    assert not admin_a.is_active
    assert AuditEntry.objects.get().changes == {"is_active": [True, False]}
    client = Client()
    client.force_login(admin_a, backend="django.contrib.auth.backends.ModelBackend")
    assert client.get(reverse("dashboard")).status_code == 302  # the session is no longer valid


def test_unknown_staff_is_404(super_client, db):
    assert super_client.get(url("staff_edit", 999999)).status_code == 404
