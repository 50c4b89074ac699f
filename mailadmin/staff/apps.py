from django.apps import AppConfig


class StaffConfig(AppConfig):
    name = "mailadmin.staff"
    label = "staff"
    verbose_name = "Staff"
