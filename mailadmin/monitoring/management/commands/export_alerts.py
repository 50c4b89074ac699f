"""manage.py export_alerts [--output FILE] [--since ISO] — one alert per line as JSON."""

import json

from django.core.management.base import BaseCommand, CommandError
from django.utils.dateparse import parse_datetime

from mailadmin.monitoring.exports import alert_lines
from mailadmin.monitoring.models import Alert


class Command(BaseCommand):
    help = "Export alerts as JSONL (rule, severity, status, first_seen, last_seen, count, entity, …)."

    def add_arguments(self, parser):
        parser.add_argument("--output", "-o", default="-", help="file to write (default: standard output)")
        parser.add_argument("--since", help="only alerts last seen at or after this ISO 8601 time")
        parser.add_argument("--min-severity", choices=["low", "medium", "high", "critical"])

    def handle(self, *args, output, since, min_severity, **options):
        alerts = Alert.objects.order_by("first_seen", "pk")
        if since:
            moment = parse_datetime(since)
            if moment is None:
                raise CommandError(f"--since {since!r} is not an ISO 8601 time")
            alerts = alerts.filter(last_seen__gte=moment)
        if min_severity:
            order = ["low", "medium", "high", "critical"]
            alerts = alerts.filter(severity__in=order[order.index(min_severity) :])
        if output == "-":
            for line in alert_lines(alerts):
                self.stdout.write(json.dumps(line, ensure_ascii=False))
            return
        try:
            with open(output, "w", encoding="utf-8") as handle:
                for line in alert_lines(alerts):
                    handle.write(json.dumps(line, ensure_ascii=False) + "\n")
        except OSError as exc:
            raise CommandError(f"cannot write {output}: {exc.strerror}") from None
