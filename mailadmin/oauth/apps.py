from django.apps import AppConfig


class OAuthConfig(AppConfig):
    name = "mailadmin.oauth"
    label = "oauth"
    verbose_name = "OAuth2 for SMTP"
