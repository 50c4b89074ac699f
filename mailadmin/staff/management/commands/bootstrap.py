"""First-run set-up for `make run`: the first superadmin and a summary of what runs where."""

from django.conf import settings
from django.core.management.base import BaseCommand

from mailadmin.staff.accounts import create_staff
from mailadmin.staff.models import Role, User

FIRST_ADMIN_EMAIL = "admin@localhost"


class Command(BaseCommand):
    help = "Create the first superadmin if none exists and print how to log in."

    def handle(self, *args, **options):
        out = self.stdout
        out.write("")
        out.write(self.style.SUCCESS("Mailadmin is starting:"))
        out.write(f"  web dashboard   {settings.SITE_URL}/")
        out.write("  Celery worker   queues default, ingest, alerts")
        out.write("  Celery beat     periodic tasks")
        out.write(f"  SMTP STARTTLS   {', '.join(settings.SMTPD_LISTEN)}")
        out.write(f"  SMTP TLS        {', '.join(settings.SMTPD_TLS_LISTEN)}")
        out.write(f"  database        {settings.DATABASES['default']['NAME']}")
        out.write(f"  alert mail      {getattr(settings, 'EMAIL_FILE_PATH', settings.EMAIL_HOST)}")
        if User.objects.filter(role=Role.SUPERADMIN, is_active=True).exists():
            out.write("  log in          with your existing superadmin account")
        else:
            user, password = create_staff(FIRST_ADMIN_EMAIL, role=Role.SUPERADMIN)
            out.write(self.style.WARNING("  First superadmin created; this password is shown only once:"))
            out.write(f"    email     {user.email}")
            out.write(f"    password  {password}")
            out.write("  At first login you will be asked to set up two-factor authentication (TOTP app).")
        out.write("")
