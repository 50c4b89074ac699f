"""Domain-name validation shared by the domain form and `manage.py domain`."""

import re

import idna
from django.core.exceptions import ValidationError

_LDH_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def normalize_domain_name(value: str) -> str:
    """Return the IDNA A-label form of a domain name ("Bücher.Example." ->
    "xn--bcher-kva.example") or raise ValidationError with a message for a person."""
    name = (value or "").strip().rstrip(".")
    if not name:
        raise ValidationError("Enter a domain name.", code="required")
    if any(ch.isspace() for ch in name) or "@" in name or "/" in name:
        raise ValidationError("A domain name has no spaces, '@' or '/'.", code="invalid")
    try:
        # UTS #46 mapping lower-cases and normalises what people type (IDNA 2008).
        a_label = idna.encode(name, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise ValidationError(f"'{value}' is not a valid domain name ({exc}).", code="invalid") from None
    labels = a_label.split(".")
    if len(labels) < 2:
        raise ValidationError("Enter a fully qualified domain name such as example.com.", code="invalid")
    if len(a_label) > 253:
        raise ValidationError("A domain name is at most 253 characters long.", code="invalid")
    for label in labels:
        if not _LDH_LABEL.match(label):
            raise ValidationError(
                f"'{label}' is not a valid label: use letters, digits and inner hyphens, at most 63 characters.",
                code="invalid",
            )
    if labels[-1].isdigit():
        raise ValidationError("The last label of a domain name cannot be numeric.", code="invalid")
    return a_label


def unicode_domain_name(a_label: str) -> str:
    """The U-label form for display; the stored A-label if it cannot be decoded."""
    try:
        return idna.decode(a_label)
    except idna.IDNAError:
        return a_label
