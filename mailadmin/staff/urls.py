from django.urls import path

from mailadmin.staff import audit_views, staff_views

app_name = "staff"

urlpatterns = [
    path("staff/", staff_views.staff_list, name="staff_list"),
    path("staff/new/", staff_views.staff_create, name="staff_create"),
    path("staff/<int:pk>/edit/", staff_views.staff_edit, name="staff_edit"),
    path("staff/<int:pk>/deactivate/", staff_views.staff_set_active, {"active": False}, name="staff_deactivate"),
    path("staff/<int:pk>/activate/", staff_views.staff_set_active, {"active": True}, name="staff_activate"),
    path("audit/", audit_views.audit_log, name="audit_log"),
    path("audit/export.csv", audit_views.audit_export, name="audit_export"),
]
