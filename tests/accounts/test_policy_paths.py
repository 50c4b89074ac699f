"""Each policy rule is enforced on every path that sets a password: the web
form (create and reset), the CSV import and the management command."""

import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from django.urls import reverse

from mailadmin.accounts import credentials
from mailadmin.accounts.models import Mailbox, PasswordPolicy

from .conftest import GOOD_PASSWORD

# (rule, password for a new mailbox "carol@a.example", words in the message, policy changes)
RULES = [
    ("min_length", "Vq7#kz!", "too short", {}),
    ("max_length", "Zebra-quilt-" * 30, "too long", {}),
    ("common", "Postmaster123", "commonly used", {"min_length": 8, "min_zxcvbn_score": 0}),
    ("address", "Carol-River-Blue-7734", "part of the mail address", {}),
    ("zxcvbn", "abcabcabcabcabc", "too easy to guess", {}),
    ("classes", "violet anchor harbour drift", "an uppercase letter", {"require_uppercase": True}),
]


@pytest.fixture
def policy(db):
    return PasswordPolicy.global_policy()


def _apply(policy, changes):
    for name, value in changes.items():
        setattr(policy, name, value)
    policy.save()


@pytest.mark.parametrize(("rule", "password", "words", "changes"), RULES, ids=[r[0] for r in RULES])
def test_rule_on_the_create_form(client_a, domain_a, policy, rule, password, words, changes):
    _apply(policy, changes)
    response = client_a.post(
        reverse("mailboxes:create"),
        {
            "domain": domain_a.pk,
            "local_part": "carol",
            "password_mode": "set",
            "password": password,
            "password_confirm": password,
        },
    )
    assert words in response.content.decode()
    assert not Mailbox.objects.filter(local_part="carol").exists()


@pytest.mark.parametrize(("rule", "password", "words", "changes"), RULES, ids=[r[0] for r in RULES])
def test_rule_on_the_reset_form(client_a, domain_a, make_mailbox, policy, rule, password, words, changes):
    carol = make_mailbox(domain_a, "carol")
    _apply(policy, changes)
    response = client_a.post(
        reverse("mailboxes:reset_password", args=[carol.pk]),
        {"password_mode": "set", "password": password, "password_confirm": password},
    )
    assert words in response.content.decode()


@pytest.mark.parametrize(("rule", "password", "words", "changes"), RULES, ids=[r[0] for r in RULES])
def test_rule_in_csv_import(client_a, domain_a, policy, rule, password, words, changes):
    _apply(policy, changes)
    content = f"address,password\ncarol@a.example,{password}\n".encode()
    response = client_a.post(reverse("mailboxes:csv_import"), {"file": SimpleUploadedFile("m.csv", content)})
    errors = response.context["errors"]
    assert errors and errors[0][0] == 2 and words in errors[0][1]


@pytest.mark.parametrize(("rule", "password", "words", "changes"), RULES, ids=[r[0] for r in RULES])
def test_rule_in_the_command(domain_a, make_mailbox, policy, rule, password, words, changes):
    make_mailbox(domain_a, "dave")
    _apply(policy, changes)
    for args in (("add", "carol@a.example"), ("passwd", "dave@a.example")):
        if args[0] == "passwd" and rule == "address":
            password = "Dave-River-Blue-7734"
        with pytest.raises(CommandError, match=words):
            call_command("mailbox", *args, "--password-stdin", stdin=io.StringIO(password + "\n"), stdout=io.StringIO())


def test_history_rule_on_form_and_command(client_a, mailbox_a):
    credentials.set_password(mailbox_a, "quartz-Lantern-meadow-47-oboe")
    response = client_a.post(
        reverse("mailboxes:reset_password", args=[mailbox_a.pk]),
        {"password_mode": "set", "password": GOOD_PASSWORD, "password_confirm": GOOD_PASSWORD},
    )
    assert "used recently" in response.content.decode()
    with pytest.raises(CommandError, match="used recently"):
        call_command(
            "mailbox",
            "passwd",
            "alice@a.example",
            "--password-stdin",
            stdin=io.StringIO(GOOD_PASSWORD + "\n"),
            stdout=io.StringIO(),
        )
