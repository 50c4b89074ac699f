"""Mailbox, app password, alias, policy, inventory and CSV pages, under /mailboxes/."""

from django.urls import path

from mailadmin.accounts.views import app_passwords, csv_io, inventory, mailboxes, policy

app_name = "mailboxes"

urlpatterns = [
    path("", mailboxes.mailbox_list, name="list"),
    path("new/", mailboxes.mailbox_create, name="create"),
    path("password-feedback/", mailboxes.password_feedback, name="password_feedback"),
    path("<int:pk>/", mailboxes.mailbox_detail, name="detail"),
    path("<int:pk>/edit/", mailboxes.mailbox_edit, name="edit"),
    path("<int:pk>/suspend/", mailboxes.mailbox_set_state, {"state": "suspended"}, name="suspend"),
    path("<int:pk>/reactivate/", mailboxes.mailbox_set_state, {"state": "active"}, name="reactivate"),
    path("<int:pk>/disable/", mailboxes.mailbox_set_state, {"state": "disabled"}, name="disable"),
    path("<int:pk>/delete/", mailboxes.mailbox_delete, name="delete"),
    path("<int:pk>/password/", mailboxes.mailbox_reset_password, name="reset_password"),
    path("<int:pk>/aliases/add/", mailboxes.alias_add, name="alias_add"),
    path("<int:pk>/aliases/<int:alias_pk>/remove/", mailboxes.alias_remove, name="alias_remove"),
    path("<int:pk>/app-passwords/new/", app_passwords.app_password_create, name="app_password_create"),
    path("<int:pk>/app-passwords/<int:app_pk>/revoke/", app_passwords.app_password_revoke, name="app_password_revoke"),
    path("inventory/", inventory.inventory, name="inventory"),
    path("policy/", policy.global_policy, name="policy"),
    path("policy/domain/<int:pk>/", policy.domain_policy, name="domain_policy"),
    path("policy/domain/<int:pk>/remove/", policy.domain_policy_remove, name="domain_policy_remove"),
    path("import/", csv_io.csv_import_view, name="csv_import"),
    path("import/confirm/", csv_io.csv_import_confirm, name="csv_import_confirm"),
    path("import/result/<str:token>/", csv_io.csv_import_result, name="csv_import_result"),
    path("export.csv", csv_io.csv_export, name="csv_export"),
]
