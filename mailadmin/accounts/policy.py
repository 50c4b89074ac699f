"""The one password-policy check: forms, CSV import, management commands and
any API call `check_password(...)` and show every message it returns.

    problems = check_password(raw, mailbox=mb)          # existing mailbox (history applies)
    problems = check_password(raw, domain=d, local_part="bob")   # new mailbox
    if problems: ...  # a list of human-readable messages, one per failed rule

The rules live in PasswordPolicy rows (global + per-domain override) edited in
the dashboard. zxcvbn scores only the first 72 characters (its own limit and
a cost bound); longer passwords are long enough for any score.
"""

from __future__ import annotations

import functools
import gzip
import string
from pathlib import Path

from django.contrib.auth.hashers import check_password as check_hash
from zxcvbn import zxcvbn

from mailadmin.accounts.models import Domain, Mailbox, PasswordPolicy

ZXCVBN_MAX_CHARS = 72
SCORE_NAMES = {
    0: "too guessable",
    1: "very guessable",
    2: "somewhat guessable",
    3: "safely unguessable",
    4: "very unguessable",
}
_EXTRA_COMMON = Path(__file__).resolve().parent / "data" / "common-passwords-extra.txt"


@functools.cache
def common_passwords() -> frozenset[str]:
    """Django's shipped list of 20,000 common passwords plus our own additions, lowercased."""
    from django.contrib.auth import password_validation

    django_list = Path(password_validation.__file__).resolve().parent / "common-passwords.txt.gz"
    with gzip.open(django_list, "rt", encoding="utf-8") as fh:
        words = {line.strip().lower() for line in fh if line.strip()}
    for line in _EXTRA_COMMON.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            words.add(line.lower())
    return frozenset(words)


def strength(raw: str, user_inputs: list[str] | None = None) -> dict:
    """zxcvbn's score (0-4) and its feedback, for the strength meter on forms."""
    result = zxcvbn(raw[:ZXCVBN_MAX_CHARS], user_inputs=user_inputs or [])
    feedback = result.get("feedback") or {}
    return {
        "score": result["score"],
        "label": SCORE_NAMES[result["score"]],
        "warning": feedback.get("warning") or "",
        "suggestions": list(feedback.get("suggestions") or []),
    }


def _address_parts(local_part: str, domain: Domain | None) -> list[str]:
    parts = []
    if local_part:
        parts.append(local_part.lower())
        # "john.smith" → "john", "smith": each name is a guess an attacker tries.
        parts.extend(p for p in local_part.lower().replace("_", ".").replace("-", ".").split(".") if len(p) >= 3)
    if domain is not None:
        name = domain.unicode_name.lower()
        parts.append(name)
        label = name.split(".")[0]
        if len(label) >= 3:
            parts.append(label)
    return sorted(set(parts), key=len, reverse=True)


def check_password(
    raw: str,
    *,
    mailbox: Mailbox | None = None,
    domain: Domain | None = None,
    local_part: str = "",
    policy: PasswordPolicy | None = None,
) -> list[str]:
    """Every failed rule's message (empty list: the password is acceptable)."""
    if mailbox is not None:
        domain = mailbox.domain
        local_part = mailbox.local_part
    if policy is None:
        policy = PasswordPolicy.for_domain(domain)
    problems: list[str] = []
    if not isinstance(raw, str) or raw == "":
        return ["The password is empty."]
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in raw):
        problems.append("The password contains control characters (such as a line break or tab).")
    if len(raw) < policy.min_length:
        problems.append(f"The password is too short: at least {policy.min_length} characters are needed.")
    if len(raw) > policy.max_length:
        problems.append(f"The password is too long: at most {policy.max_length} characters are accepted.")
    classes = [
        (policy.require_lowercase, lambda c: c.islower(), "a lowercase letter"),
        (policy.require_uppercase, lambda c: c.isupper(), "an uppercase letter"),
        (policy.require_digit, lambda c: c.isdigit(), "a digit"),
        (policy.require_symbol, lambda c: c in string.punctuation or not (c.isalnum() or c.isspace()), "a symbol"),
    ]
    for required, test, name in classes:
        if required and not any(test(c) for c in raw):
            problems.append(f"The password must contain {name}.")
    if policy.reject_common and raw.strip().lower() in common_passwords():
        problems.append("The password is on the list of commonly used passwords.")
    parts = _address_parts(local_part, domain)
    if policy.reject_address_parts:
        lowered = raw.lower()
        found = next((p for p in parts if p in lowered), None)
        if found:
            problems.append(f"The password contains part of the mail address ({found!r}).")
    if policy.min_zxcvbn_score > 0:
        result = strength(raw, parts)
        if result["score"] < policy.min_zxcvbn_score:
            hint = f" {result['warning']}" if result["warning"] else ""
            problems.append(
                f"The password is too easy to guess (strength {result['score']} of 4, "
                f"at least {policy.min_zxcvbn_score} needed).{hint}"
            )
    # History only when everything else passed: each comparison costs one Argon2 hash.
    if mailbox is not None and mailbox.pk and policy.history_count and not problems:  # noqa: SIM102
        if _in_history(raw, mailbox, policy.history_count):
            problems.append(f"The password was used recently: the last {policy.history_count} cannot be reused.")
    return problems


def _in_history(raw: str, mailbox: Mailbox, count: int) -> bool:
    hashes = []
    if mailbox.password_hash:
        hashes.append(mailbox.password_hash)
    hashes.extend(mailbox.password_history.values_list("password_hash", flat=True)[: max(count - 1, 0)])
    return any(check_hash(raw, encoded) for encoded in hashes)
