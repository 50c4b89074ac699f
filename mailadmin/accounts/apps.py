from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "mailadmin.accounts"
    label = "accounts"
    verbose_name = "Mail accounts"
