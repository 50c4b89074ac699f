"""Mailbox CSV import: validate every row (dry run), then import all-or-nothing.

File format (UTF-8, header row required; only `address` is required):

    address,display_name,password,send_rate_per_hour
    alice@example.org,Alice Example,,           ← empty password: one is generated
    bob@example.org,Bob,given-Strong-passw0rd,100

`validate(data, user)` returns (rows, errors): errors are (line number, message)
for every bad row; `import_rows(rows)` creates them in one transaction and
returns (address, password, generated?) for the one-time result file.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.db import transaction

from mailadmin.accounts import mailboxes
from mailadmin.accounts.models import Domain, Mailbox
from mailadmin.accounts.policy import check_password

COLUMNS = ["address", "display_name", "password", "send_rate_per_hour"]
REQUIRED = {"address"}


@dataclass
class Row:
    line: int
    domain: Domain
    local_part: str
    display_name: str
    password: str | None
    send_rate_per_hour: int | None

    @property
    def address(self):
        return f"{self.local_part}@{self.domain.name}"


def decode(data: bytes) -> tuple[str | None, list[tuple[int, str]]]:
    try:
        return data.decode("utf-8-sig"), []
    except UnicodeDecodeError:
        pass
    errors = []
    for number, line in enumerate(data.split(b"\n"), start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            errors.append((number, "not valid UTF-8 (save the file as UTF-8 CSV)"))
    return None, errors or [(0, "the file is not valid UTF-8")]


def validate(data: bytes, user) -> tuple[list[Row], list[tuple[int, str]]]:
    text, errors = decode(data)
    if text is None:
        return [], errors
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return [], [(1, "the file is empty")]
    except csv.Error as exc:
        return [], [(1, f"malformed CSV: {exc}")]
    header = [h.strip().lower() for h in header]
    unknown = [h for h in header if h not in COLUMNS]
    missing = REQUIRED - set(header)
    if unknown or missing or len(set(header)) != len(header):
        problems = []
        if missing:
            problems.append(f"missing column(s): {', '.join(sorted(missing))}")
        if unknown:
            problems.append(f"unknown column(s): {', '.join(unknown)}")
        if len(set(header)) != len(header):
            problems.append("a column appears twice")
        return [], [(1, "wrong columns: " + "; ".join(problems) + f" (expected {', '.join(COLUMNS)})")]

    writable = Domain.objects.writable_by(user)
    domains_by_name: dict[str, Domain | None] = {}
    rows: list[Row] = []
    seen: dict[str, int] = {}
    try:
        for values in reader:
            line = reader.line_num
            if not any(v.strip() for v in values):
                continue
            if len(values) != len(header):
                errors.append((line, f"wrong number of columns: {len(values)} instead of {len(header)}"))
                continue
            record = dict(zip(header, values, strict=True))
            row_errors = []
            try:
                local_part, domain_name = mailboxes.split_address(record["address"])
            except ValidationError as exc:
                errors.append((line, f"bad address: {' '.join(exc.messages)}"))
                continue
            if domain_name not in domains_by_name:
                domains_by_name[domain_name] = mailboxes.find_domain(domain_name, writable)
            domain = domains_by_name[domain_name]
            if domain is None:
                errors.append((line, f"{record['address'].strip()}: the domain is not one you manage"))
                continue
            key = f"{local_part.lower()}@{domain.name}"
            if key in seen:
                row_errors.append(f"duplicate of line {seen[key]}")
            else:
                seen[key] = line
                clash = mailboxes.address_clash(domain, local_part)
                if clash:
                    row_errors.append(f"duplicate: {clash}")
            display_name = (record.get("display_name") or "").strip()
            if len(display_name) > 150:
                row_errors.append("display name longer than 150 characters")
            rate_text = (record.get("send_rate_per_hour") or "").strip()
            rate = None
            if rate_text:
                if not rate_text.isdigit() or int(rate_text) < 1:
                    row_errors.append(f"send_rate_per_hour {rate_text!r} is not a positive whole number")
                else:
                    rate = int(rate_text)
            password = record.get("password") or None
            if password is not None:
                problems = check_password(password, domain=domain, local_part=local_part)
                if problems:
                    row_errors.append("weak password: " + " ".join(problems))
            if row_errors:
                errors.extend((line, f"{key}: {problem}") for problem in row_errors)
                continue
            rows.append(Row(line, domain, local_part, display_name, password, rate))
    except csv.Error as exc:
        errors.append((reader.line_num, f"malformed CSV: {exc}"))
    errors.extend(_limit_errors(rows))
    if not rows and not errors:
        errors.append((2, "the file has no mailbox rows"))
    return rows, sorted(errors)


def _limit_errors(rows: list[Row]) -> list[tuple[int, str]]:
    """Rows beyond what each domain's mailbox limit still allows, by line."""
    errors = []
    by_domain: dict[int, list[Row]] = {}
    for row in rows:
        by_domain.setdefault(row.domain.pk, []).append(row)
    for domain_rows in by_domain.values():
        domain = domain_rows[0].domain
        if not domain.max_mailboxes:
            continue
        existing = Mailbox.objects.filter(domain=domain).count()
        allowed = max(domain.max_mailboxes - existing, 0)
        for row in domain_rows[allowed:]:
            errors.append(
                (
                    row.line,
                    f"{row.address}: over the domain limit: {domain} allows {domain.max_mailboxes} mailboxes, "
                    f"has {existing}, and the file adds {len(domain_rows)}",
                )
            )
    return errors


def import_rows(rows: list[Row]) -> list[tuple[str, str, bool]]:
    """Create every row or none. Returns (address, password, generated) per row."""
    results = []
    with transaction.atomic():
        for row in rows:
            try:
                mailbox, generated = mailboxes.create_mailbox(
                    row.domain,
                    row.local_part,
                    password=row.password,
                    display_name=row.display_name,
                    send_rate_per_hour=row.send_rate_per_hour,
                )
            except ValidationError as exc:
                raise ValidationError(f"line {row.line}: {' '.join(exc.messages)}") from None
            results.append((mailbox.unicode_address, generated or row.password, generated is not None))
    return results


def result_csv(results: list[tuple[str, str, bool]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["address", "password", "generated"])
    for address, password, generated in results:
        writer.writerow([address, password if generated else "", "yes" if generated else "no (as given)"])
    return out.getvalue()
