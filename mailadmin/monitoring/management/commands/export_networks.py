"""manage.py export_networks [FILE.csv] — the named networks in the import_networks format."""

import csv

from django.core.management.base import BaseCommand

from mailadmin.monitoring.management.commands.import_networks import COLUMNS
from mailadmin.monitoring.models import NamedNetwork


def write_networks(handle):
    writer = csv.writer(handle, lineterminator="\n")
    writer.writerow(COLUMNS)
    for n in NamedNetwork.objects.order_by("network"):
        writer.writerow(
            [
                n.network,
                n.name,
                n.kind,
                n.country,
                n.city,
                "" if n.latitude is None else n.latitude,
                "" if n.longitude is None else n.longitude,
                "" if n.asn is None else n.asn,
                n.as_name,
            ]
        )


class Command(BaseCommand):
    help = "Export named networks as CSV."

    def add_arguments(self, parser):
        parser.add_argument("file", nargs="?", default="-")

    def handle(self, *args, file, **options):
        if file == "-":
            write_networks(self.stdout)
        else:
            with open(file, "w", newline="", encoding="utf-8") as handle:
                write_networks(handle)
