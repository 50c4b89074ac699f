"""Real clients: smtplib with every mechanism, swaks, and our SCRAM-SHA-256 client
(Debian's curl has no SASL SCRAM: it is built without libgsasl, see `curl -V`)."""

import base64
import shutil
import subprocess

import pytest

from mailadmin.accounts.mailboxes import create_mailbox
from mailadmin.accounts.models import Domain, Mailbox
from smtpd.mechanisms import ScramClient

from .conftest import ALICE, PASSWORD, WRONG_PASSWORD, RawClient, committed_call, delete_domain, smtp_client

pytestmark = pytest.mark.django_db
LISTENERS = ["starttls", "tls"]
CRAM_USER = "carol@cram.example"


@pytest.fixture(scope="module")
def cram_mailbox(module_accounts):
    """A mailbox in a domain with CRAM-MD5 enabled (created before the server starts)."""
    domain = Domain.objects.create(name="cram.example", cram_md5_enabled=True)
    mailbox, _ = create_mailbox(domain, "carol", password=PASSWORD)
    yield mailbox
    delete_domain(domain)


@pytest.fixture(scope="module")
def server(cram_mailbox, smtpd_factory):
    return smtpd_factory()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize("listener", LISTENERS)
@pytest.mark.parametrize(
    ("mechanism", "user"), [("PLAIN", ALICE), ("LOGIN", ALICE), ("CRAM-MD5", CRAM_USER), ("cram-md5", CRAM_USER)]
)
def test_smtplib_authenticates_with_each_mechanism(server, accounts, listener, mechanism, user):
    client = smtp_client(server, listener)
    assert "CRAM-MD5" in client.esmtp_features["auth"].split()
    client.user, client.password = user, PASSWORD
    method = {"PLAIN": client.auth_plain, "LOGIN": client.auth_login, "CRAM-MD5": client.auth_cram_md5}
    assert client.auth(mechanism, method[mechanism.upper()]) == (235, b"2.7.0 Authentication successful")
    client.quit()


@pytest.mark.parametrize("listener", LISTENERS)
def test_smtplib_wrong_password(server, accounts, listener):
    client = smtp_client(server, listener)
    client.user, client.password = CRAM_USER, WRONG_PASSWORD
    with pytest.raises(Exception) as failure:
        client.auth("CRAM-MD5", client.auth_cram_md5)
    assert failure.value.smtp_code == 535
    assert failure.value.smtp_error == b"5.7.8 Authentication credentials invalid"


def scram_dialogue(client: RawClient, user: str, password: str) -> str:
    scram = ScramClient(user, password)
    reply = client.cmd(f"AUTH SCRAM-SHA-256 {b64(scram.first())}")
    if not reply.startswith("334 "):
        return reply
    reply = client.cmd(b64(scram.final(base64.b64decode(reply[4:]))))
    if not reply.startswith("334 "):
        return reply
    assert scram.verify_server(base64.b64decode(reply[4:])), "server signature"
    return client.cmd("")


@pytest.mark.parametrize("listener", LISTENERS)
def test_scram_sha_256(server, accounts, listener):
    client = RawClient(server, listener)
    client.cmd("EHLO client.test")
    invalid = "535 5.7.8 Authentication credentials invalid"
    assert scram_dialogue(client, ALICE, WRONG_PASSWORD) == invalid
    assert scram_dialogue(client, "nobody@send.example", WRONG_PASSWORD) == invalid  # the whole dialogue, then 535
    client = RawClient(server, listener)
    client.cmd("EHLO client.test")
    assert scram_dialogue(client, ALICE, PASSWORD) == "235 2.7.0 Authentication successful"
    # Without an initial response the server sends an empty challenge first.
    client = RawClient(server, listener)
    client.cmd("EHLO client.test")
    assert client.cmd("AUTH scram-sha-256") == "334 "
    assert client.cmd("*") == "501 5.7.0 Authentication cancelled"


def test_scram_without_a_verifier_asks_for_a_transition(server, accounts):
    committed_call(
        lambda: Mailbox.objects.filter(pk=accounts["bob"].pk).update(
            scram_salt=None, scram_iterations=None, scram_stored_key=None, scram_server_key=None
        )
    )
    client = RawClient(server, "tls")
    client.cmd("EHLO client.test")
    assert scram_dialogue(client, "bob@send.example", "whatever") == "432 4.7.12 A password transition is needed"


@pytest.mark.skipif(not shutil.which("swaks"), reason="swaks is not installed")
@pytest.mark.parametrize("tls_option", ["--tls", "--tls-on-connect"])
@pytest.mark.parametrize(("mechanism", "user"), [("PLAIN", ALICE), ("LOGIN", ALICE), ("CRAM-MD5", CRAM_USER)])
def test_swaks(server, accounts, tls_option, mechanism, user):
    port = server.tls if tls_option == "--tls-on-connect" else server.starttls
    result = subprocess.run(
        ["swaks", "--server", "127.0.0.1", "--port", str(port), tls_option, "--auth", mechanism]
        + ["--auth-user", user, "--auth-password", PASSWORD, "--from", user, "--to", "friend@elsewhere.example"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "<~  235 2.7.0 Authentication successful" in result.stdout, result.stdout[-2000:]
    assert "<~  250 2.0.0 Message accepted" in result.stdout, result.stdout[-2000:]
    assert result.returncode == 0
