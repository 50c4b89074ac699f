from django.urls import path

from mailadmin.accounts.views import domains

app_name = "accounts"

urlpatterns = [
    path("domains/", domains.domain_list, name="domain_list"),
    path("domains/new/", domains.domain_create, name="domain_create"),
    path("domains/<int:pk>/", domains.domain_detail, name="domain_detail"),
    path("domains/<int:pk>/edit/", domains.domain_edit, name="domain_edit"),
    path("domains/<int:pk>/disable/", domains.domain_set_active, {"active": False}, name="domain_disable"),
    path("domains/<int:pk>/enable/", domains.domain_set_active, {"active": True}, name="domain_enable"),
    path("domains/<int:pk>/delete/", domains.domain_delete, name="domain_delete"),
]
