"""Every reply the issue lists, black-box over real sockets, on both listeners."""

import base64

import pytest

from mailadmin.accounts.models import Mailbox

from .conftest import ALICE, BOB, PASSWORD, WRONG_PASSWORD, RawClient, committed_call

pytestmark = pytest.mark.django_db
LISTENERS = ["starttls", "tls"]
INVALID = "535 5.7.8 Authentication credentials invalid"


def b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def plain(user=ALICE, password=PASSWORD, authzid=""):
    return b64(f"{authzid}\0{user}\0{password}")


def ehloed(server, listener) -> RawClient:
    client = RawClient(server, listener)
    client.ehlo = client.cmd("EHLO client.test")
    return client


@pytest.mark.parametrize("listener", LISTENERS)
def test_ehlo_advertises_auth_only_over_tls(smtpd_server, accounts, listener):
    client = ehloed(smtpd_server, listener)
    assert client.greeting.startswith("220 mx.test.example ")
    lines = client.ehlo.splitlines()
    assert lines[0] == "250-mx.test.example"
    assert "250-ENHANCEDSTATUSCODES" in lines
    assert "250-PIPELINING" in lines
    assert "250-AUTH PLAIN LOGIN SCRAM-SHA-256 XOAUTH2 OAUTHBEARER" in lines  # CRAM-MD5 is off everywhere
    assert "250-STARTTLS" not in lines
    assert any(line.startswith("250-SIZE ") for line in lines)


def test_before_starttls_auth_is_neither_advertised_nor_accepted(smtpd_server, accounts):
    client = RawClient(smtpd_server, "starttls", tls=False)
    ehlo = client.cmd("EHLO client.test")
    assert "250-STARTTLS" in ehlo.splitlines()
    assert "AUTH" not in ehlo
    assert (
        client.cmd(f"AUTH PLAIN {plain()}") == "538 5.7.11 Encryption required for requested authentication mechanism"
    )
    assert client.cmd("AUTH LOGIN") == "538 5.7.11 Encryption required for requested authentication mechanism"
    assert client.cmd("MAIL FROM:<alice@send.example>") == "530 5.7.0 Authentication required"


@pytest.mark.parametrize("listener", LISTENERS)
def test_auth_success_then_again_and_inside_a_transaction(smtpd_server, accounts, listener):
    client = ehloed(smtpd_server, listener)
    assert client.cmd("MAIL FROM:<alice@send.example>") == "530 5.7.0 Authentication required"
    assert client.cmd(f"auth plain {plain()}") == "235 2.7.0 Authentication successful"
    assert client.cmd(f"AUTH PLAIN {plain()}") == "503 5.5.1 Already authenticated"
    assert client.cmd("MAIL FROM:<alice@send.example>").startswith("250 2.1.0")
    assert client.cmd(f"AUTH PLAIN {plain()}") == "503 5.5.1 AUTH not permitted during a mail transaction"


@pytest.mark.parametrize("listener", LISTENERS)
def test_auth_before_ehlo(smtpd_server, accounts, listener):
    client = RawClient(smtpd_server, listener)  # STARTTLS listener: EHLO came before TLS only
    assert client.cmd(f"AUTH PLAIN {plain()}") == "503 5.5.1 Send EHLO first"
    assert client.cmd("HELO client.test").startswith("250 ")
    assert client.cmd(f"AUTH PLAIN {plain()}") == "503 5.5.1 Send EHLO first"


@pytest.mark.parametrize("listener", LISTENERS)
def test_syntax_cancel_and_unknown_mechanism(smtpd_server, accounts, listener):
    client = ehloed(smtpd_server, listener)
    assert client.cmd("AUTH PLAIN not-base64!") == "501 5.5.2 Invalid base64 data"
    assert client.cmd("AUTH PLAIN") == "334 "
    assert client.cmd("*") == "501 5.7.0 Authentication cancelled"
    assert client.cmd("AUTH LOGIN") == "334 VXNlcm5hbWU6"  # "Username:"
    assert client.cmd(b64(ALICE)) == "334 UGFzc3dvcmQ6"  # "Password:"
    assert client.cmd("*") == "501 5.7.0 Authentication cancelled"
    assert client.cmd("AUTH GSSAPI") == "504 5.5.4 Unrecognized authentication type"
    assert client.cmd("AUTH CRAM-MD5") == "504 5.5.4 Unrecognized authentication type"  # not enabled
    assert client.cmd("AUTH") == "501 5.5.4 Syntax: AUTH mechanism [initial-response]"
    assert client.cmd(f"AUTH PLAIN {b64('no-nuls-here')}") == "501 5.5.2 Malformed authentication data"
    # Mechanism names are case-insensitive; LOGIN with an initial response.
    assert client.cmd(f"auth Login {b64(ALICE)}") == "334 UGFzc3dvcmQ6"
    assert client.cmd(b64(PASSWORD)) == "235 2.7.0 Authentication successful"


@pytest.mark.parametrize("listener", LISTENERS)
def test_bad_credentials_read_the_same_whatever_the_reason(smtpd_server, accounts, listener):
    committed_call(lambda: Mailbox.objects.filter(pk=accounts["bob"].pk).update(state=Mailbox.State.SUSPENDED))
    client = ehloed(smtpd_server, listener)
    replies = [
        client.cmd(f"AUTH PLAIN {plain(ALICE, WRONG_PASSWORD)}"),
        client.cmd(f"AUTH PLAIN {plain('nobody@send.example', WRONG_PASSWORD)}"),
    ]
    client = ehloed(smtpd_server, listener)
    replies.append(client.cmd(f"AUTH PLAIN {plain(BOB, 'copper-Lantern-47-meadow-quiet')}"))
    assert replies == ["535 5.7.8 Authentication credentials invalid"] * 3


@pytest.mark.parametrize("listener", LISTENERS)
def test_third_failure_closes_with_421(smtpd_server, accounts, listener):
    client = ehloed(smtpd_server, listener)
    for _ in range(2):
        assert (
            client.cmd(f"AUTH PLAIN {plain(ALICE, WRONG_PASSWORD)}") == "535 5.7.8 Authentication credentials invalid"
        )
    client.send(f"AUTH PLAIN {plain(ALICE, WRONG_PASSWORD)}\r\n")
    assert client.reply() == "535 5.7.8 Authentication credentials invalid"
    assert client.reply() == "421 4.7.0 Too many failed authentication attempts, closing connection"
    assert client.closed()


@pytest.mark.parametrize("listener", LISTENERS)
def test_plain_with_another_authorization_identity_is_refused(smtpd_server, accounts, listener):
    client = ehloed(smtpd_server, listener)
    assert client.cmd(f"AUTH PLAIN {plain(authzid=BOB)}") == "535 5.7.8 Authentication credentials invalid"
    assert client.cmd(f"AUTH PLAIN {plain(authzid='Alice@Send.Example')}") == "235 2.7.0 Authentication successful"


@pytest.mark.parametrize("listener", LISTENERS)
def test_long_auth_lines(smtpd_server, accounts, listener):
    client = ehloed(smtpd_server, listener)
    # Up to 12,288 octets are read as one AUTH line (here: valid base64 but not PLAIN).
    line = "AUTH PLAIN " + "QUFB" * ((12288 - 11) // 4)
    assert len(line) <= 12288
    assert client.cmd(line) == "501 5.5.2 Malformed authentication data"
    # One octet more than the limit: one 500 5.5.6, and the session stays in step.
    client.send("AUTH PLAIN " + "A" * 12300 + "\r\nNOOP\r\n")
    assert client.reply() == "500 5.5.6 Authentication Exchange line is too long"
    assert client.reply() == "250 2.0.0 OK"
    # The same for a continuation line.
    assert client.cmd("AUTH LOGIN") == "334 VXNlcm5hbWU6"
    client.send("A" * 20000 + "\r\nNOOP\r\n")
    assert client.reply() == "500 5.5.6 Authentication Exchange line is too long"
    assert client.reply() == "250 2.0.0 OK"
    assert client.cmd(f"AUTH PLAIN {plain()}") == "235 2.7.0 Authentication successful"


@pytest.mark.parametrize("listener", LISTENERS)
def test_mail_from_must_be_the_mailbox_or_an_alias(smtpd_server, accounts, listener):
    client = ehloed(smtpd_server, listener)
    assert client.cmd(f"AUTH PLAIN {plain()}") == "235 2.7.0 Authentication successful"
    rejected = "553 5.7.1 Sender address rejected: not owned by alice@send.example"
    assert client.cmd("MAIL FROM:<bob@send.example>") == rejected
    assert client.cmd("MAIL FROM:<someone@elsewhere.example>") == rejected
    assert client.cmd("MAIL FROM:<sales@send.example>") == "250 2.1.0 Sender OK"
    assert client.cmd("RSET") == "250 2.0.0 OK"
    assert client.cmd("MAIL FROM:<Alice@Send.Example>") == "250 2.1.0 Sender OK"
    assert client.cmd("RCPT TO:<friend@elsewhere.example>") == "250 2.1.5 Recipient OK"
    assert client.cmd("DATA") == "354 End data with <CR><LF>.<CR><LF>"
    assert client.cmd("Subject: hi\r\n\r\n..dot\r\n.").startswith("250 2.0.0 Message accepted")


@pytest.mark.parametrize("listener", LISTENERS)
def test_size_is_advertised_and_enforced(smtpd_server, accounts, listener):
    client = ehloed(smtpd_server, listener)
    size = int(next(line for line in client.ehlo.splitlines() if "SIZE" in line).split()[-1])
    client.cmd(f"AUTH PLAIN {plain()}")
    too_big = "552 5.3.4 Message size exceeds fixed maximum message size"
    assert client.cmd(f"MAIL FROM:<alice@send.example> SIZE={size + 1}") == too_big
    assert client.cmd(f"MAIL FROM:<alice@send.example> SIZE={size}") == "250 2.1.0 Sender OK"
    client.cmd("RCPT TO:<friend@elsewhere.example>")
    client.cmd("DATA")
    line = "x" * 998 + "\r\n"
    client.send(line * (size // len(line) + 2) + ".\r\n")
    assert client.reply() == too_big
    assert client.cmd("NOOP") == "250 2.0.0 OK"
