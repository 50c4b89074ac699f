from django.apps import AppConfig


class MonitoringConfig(AppConfig):
    name = "mailadmin.monitoring"
    verbose_name = "Login monitoring"
    default_auto_field = "django.db.models.BigAutoField"
