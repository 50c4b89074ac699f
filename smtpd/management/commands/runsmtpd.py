"""`manage.py runsmtpd [--workers N] ...`: the same as `python -m smtpd`."""

from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Run the SMTP submission server (options as for `python -m smtpd --help`)."

    def add_arguments(self, parser):
        parser.add_argument("args", nargs="*", help="options passed to python -m smtpd, after --")

    def handle(self, *args, **options):
        from smtpd.__main__ import main

        raise SystemExit(main(list(args)))
