from django.contrib import admin
from django.urls import include, path

from mailadmin.staff import views as staff_views

admin.site.site_header = "Mailadmin (superadmin)"

urlpatterns = [
    path("", staff_views.dashboard, name="dashboard"),
    path("accounts/", include("allauth.urls")),
    path("mailboxes/", include("mailadmin.accounts.urls_mailboxes")),
    path("django-admin/", admin.site.urls),
]
