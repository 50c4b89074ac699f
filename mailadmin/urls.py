from django.contrib import admin
from django.urls import include, path

from mailadmin.staff import views as staff_views

admin.site.site_header = "Mailadmin (superadmin)"

urlpatterns = [
    path("", staff_views.dashboard, name="dashboard"),
    path("accounts/", include("allauth.urls")),
    path("django-admin/", admin.site.urls),
    path("oauth/", include("mailadmin.oauth.urls")),
    path("my/", include("mailadmin.portal.urls")),
]
