"""manage.py mailbox: the policy and the address rules apply, errors are clear."""

import io
import re

import pytest
from django.core.management import CommandError, call_command

from mailadmin.accounts.models import AppPassword, Mailbox
from mailadmin.accounts.verify import Reason, verify_password

from .conftest import GOOD_PASSWORD

NEW_PASSWORD = "quartz-Lantern-meadow-47-oboe"


def run(*args, stdin=None):
    out = io.StringIO()
    call_command("mailbox", *args, stdout=out, stdin=io.StringIO(stdin) if stdin is not None else None)
    return out.getvalue()


@pytest.mark.embedded
def test_add_with_generated_password(domain_a):
    output = run("add", "carol@A.example", "--display-name", "Carol")
    password = re.search(r"Password \(shown once\): (\S+)", output).group(1)
    assert verify_password("carol@a.example", password).ok


def test_add_with_given_password_from_stdin(domain_a):
    run("add", "carol@a.example", "--password-stdin", stdin=GOOD_PASSWORD + "\n")
    assert verify_password("carol@a.example", GOOD_PASSWORD).ok


def test_policy_enforced_with_every_message(domain_a):
    with pytest.raises(CommandError) as excinfo:
        run("add", "carol@a.example", "--password-stdin", stdin="carol\n")
    message = str(excinfo.value)
    assert "too short" in message and "part of the mail address" in message and "too easy to guess" in message
    assert not Mailbox.objects.exists()


def test_clear_errors(domain_a, mailbox_a):
    for args, words in [
        (("add", "not-an-address"), "is not a mail address"),
        (("add", "x@nowhere.example"), "does not exist"),
        (("add", "alice@a.example"), "already exists"),
        (("passwd", "ghost@a.example"), "No mailbox"),
        (("suspend", "alice@a.example"), "Give a reason"),
        (("apppassword", "alice@a.example"), "--name"),
        (("apppassword", "alice@a.example", "--name", "x", "--networks", "bogus"), "not an IP network"),
    ]:
        with pytest.raises(CommandError, match=words):
            run(*args)


def test_passwd_suspend_list_and_apppassword(mailbox_a):
    run("passwd", "alice@a.example", "--password-stdin", stdin=NEW_PASSWORD + "\n")
    assert verify_password("alice@a.example", NEW_PASSWORD).ok
    with pytest.raises(CommandError, match="used recently"):
        run("passwd", "alice@a.example", "--password-stdin", stdin=GOOD_PASSWORD + "\n")
    run("suspend", "alice@a.example", "--reason", "phished")
    assert verify_password("alice@a.example", NEW_PASSWORD).reason == Reason.SUSPENDED
    assert "alice@a.example\tsuspended" in run("list", "--state", "suspended")
    run("suspend", "alice@a.example", "--reactivate")
    output = run("apppassword", "alice@a.example", "--name", "cli", "--expires-days", "30")
    secret = output.rsplit(" ", 1)[1].strip()
    assert verify_password("alice@a.example", secret).ok
    app = AppPassword.objects.get()
    run("apppassword", "alice@a.example", "--revoke", str(app.pk))
    assert not verify_password("alice@a.example", secret).ok
