"""The password policy check: each rule, global vs per-domain rows, history."""

import pytest

from mailadmin.accounts import credentials
from mailadmin.accounts.models import PasswordPolicy
from mailadmin.accounts.policy import check_password, common_passwords

from .conftest import GOOD_PASSWORD


def _has(problems, words):
    return any(words in p for p in problems)


@pytest.mark.embedded
def test_good_password_passes(domain_a):
    assert check_password(GOOD_PASSWORD, domain=domain_a, local_part="alice") == []


def test_every_failed_rule_is_reported(domain_a):
    problems = check_password("alice", domain=domain_a, local_part="alice")
    assert _has(problems, "too short")
    assert _has(problems, "part of the mail address")
    assert _has(problems, "too easy to guess")


def test_length_limits(domain_a):
    assert _has(check_password("Xq7!mZ2#", domain=domain_a), "too short")
    long_one = "Zebra-quilt-" * 30
    assert _has(check_password(long_one, domain=domain_a), "too long: at most 256")


def test_common_list_includes_djangos_and_ours(domain_a):
    assert "password" in common_passwords() and "postmaster123" in common_passwords()
    policy = PasswordPolicy.global_policy()
    policy.min_length = 8
    policy.min_zxcvbn_score = 0
    policy.save()
    assert _has(check_password("Postmaster123", domain=domain_a), "commonly used")
    assert _has(check_password("iloveyou", domain=domain_a), "commonly used")


def test_address_parts_rejected(domain_a):
    problems = check_password("Smith-River-Blue-7734", domain=domain_a, local_part="john.smith")
    assert _has(problems, "part of the mail address ('smith')")
    assert _has(check_password("myA.ExampleDomain-Pw42", domain=domain_a, local_part="x"), "mail address")


def test_character_classes_are_off_by_default_and_enforced_when_on(domain_a):
    assert check_password("violet anchor harbour drift", domain=domain_a) == []
    policy = PasswordPolicy.global_policy()
    policy.require_uppercase = policy.require_digit = policy.require_symbol = True
    policy.save()
    problems = check_password("violet anchor harbour drift", domain=domain_a)
    assert _has(problems, "an uppercase letter") and _has(problems, "a digit") and _has(problems, "a symbol")


def test_zxcvbn_score(domain_a):
    problems = check_password("aaaaaaaaaaaaaaaa", domain=domain_a)
    assert _has(problems, "strength 0 of 4, at least 3 needed")


def test_control_characters_refused(domain_a):
    assert _has(check_password("violet-anchor\nharbour-91", domain=domain_a), "control characters")


def test_domain_override_replaces_global(domain_a, domain_b):
    PasswordPolicy.objects.create(domain=domain_a, min_length=20)
    assert _has(check_password("violet-Anchor-91x", domain=domain_a), "at least 20")
    assert check_password("violet-Anchor-91x", domain=domain_b) == []


def test_history_blocks_reuse_of_last_n(mailbox_a):
    passwords = [f"violet-anchor-{w}-91" for w in ("Harbour", "Meadow", "Lantern", "Quartz", "Saffron", "Tundra")]
    for pw in passwords:
        credentials.set_password(mailbox_a, pw)
    # Last 5 (including the current one) are refused; the sixth-oldest is allowed again.
    for pw in passwords[-5:]:
        assert _has(check_password(pw, mailbox=mailbox_a), "used recently")
    assert check_password(passwords[0], mailbox=mailbox_a) == []
    with pytest.raises(credentials.PasswordRejected) as excinfo:
        credentials.set_password(mailbox_a, passwords[-1])
    assert _has(excinfo.value.messages, "used recently")
    assert mailbox_a.password_history.count() <= 5


def test_only_one_global_policy_row(db):
    from django.db import IntegrityError, transaction

    PasswordPolicy.global_policy()
    with pytest.raises(IntegrityError), transaction.atomic():
        PasswordPolicy.objects.create(domain=None)
