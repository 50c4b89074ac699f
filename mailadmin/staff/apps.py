from django.apps import AppConfig


class StaffConfig(AppConfig):
    name = "mailadmin.staff"
    label = "staff"
    verbose_name = "Staff"

    def ready(self):
        from mailadmin.staff import signals  # noqa: F401 - connects the audit receivers
