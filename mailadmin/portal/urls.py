from django.urls import path

from mailadmin.portal import views

app_name = "portal"

urlpatterns = [
    path("", views.home, name="home"),
    path("login/", views.login, name="login"),
    path("login/code/", views.login_totp, name="login_totp"),
    path("logout/", views.logout, name="logout"),
    path("password/", views.password, name="password"),
    path("app-passwords/", views.app_passwords, name="app_passwords"),
    path("app-passwords/<int:pk>/revoke/", views.app_password_revoke, name="app_password_revoke"),
    path("grants/", views.grants, name="grants"),
    path("grants/<int:application_pk>/revoke/", views.grant_revoke, name="grant_revoke"),
    path("preferences/", views.preferences, name="preferences"),
    path("preferences/totp/", views.totp_setup, name="totp_setup"),
    path("preferences/totp/off/", views.totp_disable, name="totp_disable"),
]
