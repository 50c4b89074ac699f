"""Creating and changing mailboxes and aliases: the rules every path shares
(web forms, CSV import, management command): address syntax, no duplicates,
no alias shadowing a mailbox (or the reverse), the domain's mailbox limit,
the password policy. Each function raises ValidationError with clear messages
and writes nothing on error.
"""

from __future__ import annotations

import re
import unicodedata

import idna
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models.functions import Lower

from mailadmin.accounts import credentials
from mailadmin.accounts.models import Alias, Domain, Mailbox
from mailadmin.accounts.policy import check_password

# RFC 5322 dot-atom text plus any non-ASCII character (RFC 6531, SMTPUTF8).
_ATOM_CHAR = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010FFFF]"
_DOT_ATOM = re.compile(rf"{_ATOM_CHAR}+(\.{_ATOM_CHAR}+)*")


def clean_local_part(raw: str) -> str:
    """NFC-normalised local part, or ValidationError saying what is wrong."""
    local = unicodedata.normalize("NFC", (raw or "").strip())
    if not local:
        raise ValidationError("The local part (before the @) is empty.")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zs", "Zl", "Zp", "Cs") for ch in local if not ch.isascii()):
        raise ValidationError("The local part contains invisible or control characters.")
    if not _DOT_ATOM.fullmatch(local):
        raise ValidationError(
            f"{local!r} is not a valid local part: use letters, digits and !#$%&'*+/=?^_`{{|}}~.- "
            "with no leading, trailing or double dots, no spaces or quotes."
        )
    if len(local.encode("utf-8")) > 64:
        raise ValidationError("The local part is longer than 64 bytes.")
    return local


def domain_a_label(raw: str) -> str:
    name = (raw or "").strip().rstrip(".")
    try:
        return idna.encode(name, uts46=True).decode("ascii").lower()
    except (idna.IDNAError, UnicodeError, ValueError):
        raise ValidationError(f"{raw!r} is not a valid domain name.") from None


def split_address(address: str) -> tuple[str, str]:
    """("Local", "a-label.example") from "Local@Domain.Example"; ValidationError if malformed."""
    address = (address or "").strip()
    local, sep, domain = address.rpartition("@")
    if not sep or not local or not domain:
        raise ValidationError(f"{address!r} is not a mail address (expected local-part@domain).")
    return clean_local_part(local), domain_a_label(domain)


def find_domain(name: str, queryset=None) -> Domain | None:
    queryset = queryset if queryset is not None else Domain.objects.all()
    return queryset.annotate(name_lower=Lower("name")).filter(name_lower=domain_a_label(name)).first()


def address_clash(domain: Domain, local_part: str, *, mailbox: Mailbox | None = None, alias: Alias | None = None):
    """A message if the address is already a mailbox or an alias (other than the given ones)."""
    mailboxes = Mailbox.objects.annotate(lp=Lower("local_part")).filter(domain=domain, lp=local_part.lower())
    aliases = Alias.objects.annotate(lp=Lower("local_part")).filter(domain=domain, lp=local_part.lower())
    if mailbox is not None and mailbox.pk:
        mailboxes = mailboxes.exclude(pk=mailbox.pk)
    if alias is not None and alias.pk:
        aliases = aliases.exclude(pk=alias.pk)
    address = f"{local_part}@{domain.unicode_name}"
    if mailboxes.exists():
        return f"A mailbox {address} already exists."
    if aliases.exists():
        return f"{address} is already an alias."
    return None


def check_domain_limit(domain: Domain, adding: int = 1) -> None:
    if domain.max_mailboxes and Mailbox.objects.filter(domain=domain).count() + adding > domain.max_mailboxes:
        raise ValidationError(
            f"The domain {domain} is limited to {domain.max_mailboxes} mailboxes "
            f"and already has {Mailbox.objects.filter(domain=domain).count()}."
        )


def create_mailbox(
    domain: Domain,
    local_part: str,
    *,
    password: str | None = None,
    display_name: str = "",
    send_rate_per_hour: int | None = None,
) -> tuple[Mailbox, str | None]:
    """Create a mailbox; returns (mailbox, generated password or None if one was given).
    The given password is checked against the policy (every failed rule reported)."""
    local_part = clean_local_part(local_part)
    if password is not None:
        problems = check_password(password, domain=domain, local_part=local_part)
        if problems:
            raise credentials.PasswordRejected(problems)
    generated = None
    if password is None:
        generated = password = credentials.generate_password(domain=domain, local_part=local_part)
    try:
        with transaction.atomic():
            # Lock the domain row: the limit and clash checks then hold until commit.
            locked = Domain.objects.select_for_update().get(pk=domain.pk)
            check_domain_limit(locked)
            clash = address_clash(locked, local_part)
            if clash:
                raise ValidationError(clash)
            mailbox = Mailbox(
                domain=locked,
                local_part=local_part,
                display_name=display_name,
                send_rate_per_hour=send_rate_per_hour,
            )
            credentials.set_password(mailbox, password, enforce_policy=False)
    except IntegrityError:
        raise ValidationError(f"A mailbox {local_part}@{domain.unicode_name} already exists.") from None
    return mailbox, generated


def add_alias(mailbox: Mailbox, address: str) -> Alias:
    """Add an alias ("name" in the mailbox's domain, or a full address in a domain `mailbox` may use)."""
    if "@" in address:
        local_part, domain_name = split_address(address)
        domain = find_domain(domain_name)
        if domain is None:
            raise ValidationError(f"The domain of {address!r} is not managed here.")
    else:
        local_part, domain = clean_local_part(address), mailbox.domain
    try:
        with transaction.atomic():
            Domain.objects.select_for_update().get(pk=domain.pk)
            clash = address_clash(domain, local_part)
            if clash:
                raise ValidationError(clash)
            return Alias.objects.create(mailbox=mailbox, domain=domain, local_part=local_part)
    except IntegrityError:
        raise ValidationError(f"{local_part}@{domain.unicode_name} is already an alias.") from None


def suspend(mailbox: Mailbox, reason: str) -> None:
    reason = (reason or "").strip()
    if not reason:
        raise ValidationError("Give a reason for the suspension (shown to other admins).")
    mailbox.state = Mailbox.State.SUSPENDED
    mailbox.suspend_reason = reason[:255]
    mailbox.save(update_fields=["state", "suspend_reason", "updated"])


def reactivate(mailbox: Mailbox) -> None:
    mailbox.state = Mailbox.State.ACTIVE
    mailbox.suspend_reason = ""
    mailbox.save(update_fields=["state", "suspend_reason", "updated"])


def set_state(mailbox: Mailbox, state: str, reason: str = "") -> None:
    if state == Mailbox.State.SUSPENDED:
        suspend(mailbox, reason)
    elif state == Mailbox.State.ACTIVE:
        reactivate(mailbox)
    elif state == Mailbox.State.DISABLED:
        mailbox.state = state
        mailbox.suspend_reason = (reason or "")[:255]
        mailbox.save(update_fields=["state", "suspend_reason", "updated"])
    else:
        raise ValidationError(f"Unknown state {state!r}.")
