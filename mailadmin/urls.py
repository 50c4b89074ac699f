from allauth.account.decorators import secure_admin_login
from django.contrib import admin
from django.urls import include, path

from mailadmin.oauth import views as oauth_views
from mailadmin.staff import views as staff_views

admin.site.site_header = "Mailadmin (superadmin)"
# The Django admin signs in through allauth (password + MFA); only superadmins get in.
admin.site.login = secure_admin_login(admin.site.login)

urlpatterns = [
    path("", staff_views.dashboard, name="dashboard"),
    path("accounts/", include("allauth.urls")),
    path("", include("mailadmin.accounts.urls")),
    path("", include("mailadmin.staff.urls")),
    path("mailboxes/", include("mailadmin.accounts.urls_mailboxes")),
    path("monitoring/", include("mailadmin.monitoring.urls")),
    path("django-admin/", admin.site.urls),
    path("oauth/", include("mailadmin.oauth.urls")),
    path(".well-known/oauth-authorization-server", oauth_views.authorization_server_metadata),
    path("my/", include("mailadmin.portal.urls")),
]

# A database outage is a 503 "maintenance" page, not a generic 500 (mailadmin.maintenance).
handler500 = "mailadmin.maintenance.server_error"
