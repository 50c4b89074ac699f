from django.apps import AppConfig


class PortalConfig(AppConfig):
    name = "mailadmin.portal"
    label = "portal"
    verbose_name = "Mailbox-owner portal"
