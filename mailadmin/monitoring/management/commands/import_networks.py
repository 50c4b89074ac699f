"""manage.py import_networks FILE.csv — named networks, columns exactly:
network,name,kind,country,city,latitude,longitude,asn,as_name

Rows are upserted by network. A bad row is reported with its line number and
skipped; the good rows are still imported. `-` reads standard input.
"""

import csv
import ipaddress
import sys

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from mailadmin.monitoring.enrich import networks_changed
from mailadmin.monitoring.models import NamedNetwork, NetworkKind

COLUMNS = ["network", "name", "kind", "country", "city", "latitude", "longitude", "asn", "as_name"]


def parse_row(row: dict) -> dict:
    """One CSV row → NamedNetwork fields (raises ValueError with a readable reason)."""
    try:
        network = str(ipaddress.ip_network(row["network"].strip(), strict=False))
    except ValueError:
        raise ValueError(f"network {row['network']!r} is not a CIDR network") from None
    name = row["name"].strip()
    if not name:
        raise ValueError("name is empty")
    kind = row["kind"].strip().lower()
    if kind not in NetworkKind.values:
        raise ValueError(f"kind {kind!r} is not one of {', '.join(NetworkKind.values)}")
    country = row["country"].strip().upper()
    if country and (len(country) != 2 or not country.isalpha()):
        raise ValueError(f"country {country!r} is not a two-letter code")

    def number(field, lo, hi, cast=float):
        text = (row[field] or "").strip()
        if not text:
            return None
        try:
            value = cast(text)
        except ValueError:
            raise ValueError(f"{field} {text!r} is not a number") from None
        if not lo <= value <= hi:
            raise ValueError(f"{field} {text} is out of range")
        return value

    asn_text = (row["asn"] or "").strip().upper().removeprefix("AS")
    return {
        "network": network,
        "name": name[:200],
        "kind": kind,
        "country": country,
        "city": (row["city"] or "").strip()[:100],
        "latitude": number("latitude", -90, 90),
        "longitude": number("longitude", -180, 180),
        "asn": _asn(asn_text),
        "as_name": (row["as_name"] or "").strip()[:200],
    }


def _asn(text):
    if not text:
        return None
    if not text.isdigit() or int(text) >= 2**32:
        raise ValueError(f"asn {text!r} is not an AS number")
    return int(text)


class Command(BaseCommand):
    help = "Import named networks from CSV (network,name,kind,country,city,latitude,longitude,asn,as_name)."

    def add_arguments(self, parser):
        parser.add_argument("file", help="CSV file, or - for standard input")
        parser.add_argument("--replace", action="store_true", help="Delete named networks not in the file")

    def handle(self, *args, file, replace, **options):
        try:
            handle = sys.stdin if file == "-" else open(file, newline="", encoding="utf-8-sig")  # noqa: SIM115
        except OSError as exc:
            raise CommandError(f"cannot read {file}: {exc.strerror}") from None
        with handle:
            reader = csv.DictReader(handle)
            header = [h.strip().lower() for h in (reader.fieldnames or [])]
            if header != COLUMNS:
                raise CommandError(f"the header must be exactly: {','.join(COLUMNS)} (got {','.join(header)})")
            reader.fieldnames = header
            good, bad = [], 0
            for row in reader:
                line = reader.line_num
                if None in row or any(v is None for v in row.values()):
                    self.stderr.write(f"line {line}: expected {len(COLUMNS)} columns")
                    bad += 1
                    continue
                try:
                    good.append(parse_row(row))
                except ValueError as exc:
                    self.stderr.write(f"line {line}: {exc}")
                    bad += 1
        created = updated = 0
        with transaction.atomic():
            for fields in good:
                _, was_created = NamedNetwork.objects.update_or_create(network=fields["network"], defaults=fields)
                created += was_created
                updated += not was_created
            if replace:
                NamedNetwork.objects.exclude(network__in=[f["network"] for f in good]).delete()
        networks_changed()
        self.stdout.write(f"{created} created, {updated} updated, {bad} bad row(s) skipped")
