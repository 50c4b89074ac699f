"""Secrets sweep: a scripted session sets mailbox passwords, creates an app password
through the staff pages and an OAuth access token, and authenticates with every
mechanism (PLAIN, LOGIN, CRAM-MD5, SCRAM-SHA-256, XOAUTH2, OAUTHBEARER, right and
wrong) against the real smtpd over real sockets. Then it captures every broker
message (all Redis keys, kombu bodies decoded), lets a real Celery worker ingest
them, dumps every table of the database with raw SQL, reads the cache, the spool,
the smtpd and worker logs and every log record of this process - and asserts that
no secret appears anywhere, raw, URL-encoded or in any base64 alignment."""

import base64
import json
import logging
import os
import signal
import smtplib
import subprocess
import sys
import time
from urllib.parse import quote, quote_plus

import pytest
import redis
from django.conf import settings as django_settings
from django.db import connection
from django.test import Client
from django.urls import reverse

from mailadmin.accounts.credentials import set_password
from mailadmin.accounts.mailboxes import create_mailbox
from mailadmin.accounts.models import Domain, Mailbox
from mailadmin.staff.accounts import create_staff
from mailadmin.staff.models import Role
from smtpd.mechanisms import ScramClient
from tests.conftest import add_totp
from tests.integration.processes import wait_for
from tests.smtpd.conftest import ROOT, TEST_FERNET_KEY, RawClient, server_env, smtp_client, smtpd_factory  # noqa: F401

pytestmark = pytest.mark.integration

FIRST_PASSWORD = "Juniper-Quartz-Lantern-58-river"
MAILBOX_PASSWORD = "Saffron-Meadow-Copper-73-glide"
WRONG_PASSWORD = "Wrong-Guess-Pelican-00-tundra"
STAFF_PASSWORD = "Staff-Obsidian-Falcon-41-brook"
ADDRESS = "carol@secrets.example"


def b64_fragments(secret: bytes) -> set[bytes]:
    """What the secret looks like inside any base64 text, whatever its offset in the
    encoded blob: the characters that depend only on the secret's own bytes."""
    fragments = set()
    for offset in range(3):
        encoded = base64.b64encode(b"\x00" * offset + secret)
        start = (offset * 8 + 5) // 6 + (1 if offset else 0)  # skip chars mixing prefix bits
        end = len(encoded) - 4  # the tail may mix padding
        if end - start >= 8:
            fragments.add(encoded[start:end])
    fragments.add(base64.b64encode(secret).rstrip(b"="))
    return fragments


def forms_of(secret: str) -> set[bytes]:
    raw = secret.encode()
    forms = {raw, quote(secret).encode(), quote_plus(secret).encode(), raw.hex().encode()}
    forms |= b64_fragments(raw)
    forms |= {base64.urlsafe_b64encode(raw).rstrip(b"=")}
    return forms


def redis_dump(url: str) -> list[bytes]:
    """Every key and value of one Redis database, kombu message bodies decoded."""
    client = redis.Redis.from_url(url)
    found = []
    for key in client.scan_iter(count=1000):
        found.append(key)
        kind = client.type(key)
        if kind == b"string":
            values = [client.get(key)]
        elif kind == b"list":
            values = client.lrange(key, 0, -1)
        elif kind == b"hash":
            values = [b"%s=%s" % kv for kv in client.hgetall(key).items()]
        elif kind == b"set":
            values = list(client.smembers(key))
        elif kind == b"zset":
            values = [m for m, _ in client.zrange(key, 0, -1, withscores=True)]
        else:
            values = []
        for value in values:
            found.append(value or b"")
            found += _kombu_body(value)
    return found


def _kombu_body(value: bytes) -> list[bytes]:
    try:
        message = json.loads(value)
        if isinstance(message, dict) and isinstance(message.get("body"), str):
            return [base64.b64decode(message["body"])]
    except (ValueError, TypeError):
        pass
    return []


def database_dump() -> list[bytes]:
    rows = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f'SELECT * FROM "{table}"')  # noqa: S608 - names from the catalogue
            for row in cursor.fetchall():
                for value in row:
                    if isinstance(value, memoryview | bytes):
                        rows.append(bytes(value))
                    rows.append(str(value).encode())
    return rows


def leaks(haystacks: dict[str, list[bytes]], secrets: dict[str, str]) -> list[str]:
    found = []
    for name, secret in secrets.items():
        for form in forms_of(secret):
            for where, items in haystacks.items():
                if any(form in item for item in items):
                    found.append(f"{name} ({form[:12]!r}...) in {where}")
    return found


def start_worker(log_path, env):
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "mailadmin",
        "worker",
        "--pool",
        "solo",
        "-Q",
        "ingest,default,alerts",
        "--loglevel",
        "DEBUG",
        "--without-heartbeat",
        "--without-gossip",
    ]
    log = open(log_path, "w")  # noqa: SIM115 - kept open for the worker's life
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log


def test_no_secret_reaches_the_database_logs_broker_cache_or_spool(
    transactional_db,
    smtpd_factory,  # noqa: F811
    settings,
    caplog,
    tmp_path,  # noqa: F811
):
    caplog.set_level(logging.DEBUG)
    settings.CREDENTIAL_ENCRYPTION_KEYS = [TEST_FERNET_KEY]
    broker_url = os.environ.get("CELERY_BROKER_URL", "")
    if not broker_url.startswith("redis://"):
        pytest.skip("needs the Redis broker of `make test`")
    redis.Redis.from_url(broker_url).flushdb()  # this suite's own broker database

    # --- a staff session sets passwords and creates an app password through the pages
    staff, _ = create_staff("secrets-root@staff.example", role=Role.SUPERADMIN, password=STAFF_PASSWORD)
    staff_totp = add_totp(staff)
    domain = Domain.objects.create(name="secrets.example", cram_md5_enabled=True)
    mailbox, _ = create_mailbox(domain, "carol", password=FIRST_PASSWORD)
    set_password(Mailbox.objects.get(pk=mailbox.pk), MAILBOX_PASSWORD)
    web = Client()
    assert web.post(reverse("account_login"), {"login": staff.email, "password": STAFF_PASSWORD}).status_code == 302
    web.force_login(staff, backend="django.contrib.auth.backends.ModelBackend")
    response = web.post(reverse("mailboxes:app_password_create", args=[mailbox.pk]), {"name": "Phone"})
    assert response.status_code == 200, response.content[:500]
    app_password = response.context["secret"]

    # --- an OAuth access token for the mailbox
    from mailadmin.oauth.models import Application
    from tests.oauth.helpers import issue_token, make_application

    application = make_application(client_type=Application.CLIENT_CONFIDENTIAL, secret="Client-Secret-Walnut-62-ember")
    _, access_token = issue_token(Mailbox.objects.get(pk=mailbox.pk), application)

    # --- every mechanism against the real server, over real TLS sockets
    server = smtpd_factory(SMTPD_AUTH_FAIL_DELAY="0", SMTPD_MAX_AUTH_FAILURES="100")
    attempts = 0

    def smtplib_auth(mechanism, user, password, listener="tls"):
        nonlocal attempts
        attempts += 1
        client = smtp_client(server, listener)
        client.user, client.password = user, password
        method = {"PLAIN": client.auth_plain, "LOGIN": client.auth_login, "CRAM-MD5": client.auth_cram_md5}
        try:
            return client.auth(mechanism, method[mechanism])[0]
        except smtplib.SMTPAuthenticationError as failure:
            return failure.smtp_code
        finally:
            client.close()

    for mechanism in ("PLAIN", "LOGIN", "CRAM-MD5"):
        assert smtplib_auth(mechanism, ADDRESS, MAILBOX_PASSWORD) == 235, mechanism
        assert smtplib_auth(mechanism, ADDRESS, WRONG_PASSWORD) == 535, mechanism
    assert smtplib_auth("PLAIN", ADDRESS, app_password, listener="starttls") == 235
    assert smtplib_auth("LOGIN", "nobody@secrets.example", WRONG_PASSWORD) == 535

    def raw_exchange(first_line, *responses):
        nonlocal attempts
        attempts += 1
        client = RawClient(server, "tls")
        client.cmd("EHLO client.test")
        reply = client.cmd(first_line)
        for response in responses:
            reply = client.cmd(response(reply) if callable(response) else response)
        return reply

    def b64(data):
        return base64.b64encode(data if isinstance(data, bytes) else data.encode()).decode()

    for password, expected in ((MAILBOX_PASSWORD, "235"), (WRONG_PASSWORD, "535")):
        scram = ScramClient(ADDRESS, password)
        reply = raw_exchange(
            f"AUTH SCRAM-SHA-256 {b64(scram.first())}",
            lambda reply, scram=scram: b64(scram.final(base64.b64decode(reply[4:]))),
            *([lambda reply: ""] if expected == "235" else []),
        )
        assert reply.startswith(expected), reply
    xoauth2 = f"user={ADDRESS}\x01auth=Bearer {access_token}\x01\x01"
    assert raw_exchange(f"AUTH XOAUTH2 {b64(xoauth2)}").startswith("235")
    oauthbearer = f"n,a={ADDRESS},\x01auth=Bearer {access_token}\x01\x01"
    assert raw_exchange(f"AUTH OAUTHBEARER {b64(oauthbearer)}").startswith("235")

    # --- the broker as the smtpd left it (no worker yet): every published batch
    r = redis.Redis.from_url(broker_url)
    assert wait_for(lambda: r.llen("ingest") > 0, timeout=30), "the smtpd published no auth events"
    time.sleep(1.0)  # the last batch (250 ms flush interval)
    broker = redis_dump(broker_url)
    events = [e for body in broker for e in _events_in(body)]
    assert len(events) >= attempts, f"{len(events)} events for {attempts} attempts"

    # --- a real worker ingests them into the database
    worker_env = server_env(tmp_path)
    worker, worker_log = start_worker(tmp_path / "worker.log", worker_env)
    try:
        from mailadmin.monitoring.models import AuthEvent

        assert wait_for(lambda: AuthEvent.objects.count() >= attempts, timeout=60), (
            tmp_path / "worker.log"
        ).read_text()
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
        worker_log.close()
    server.stop()

    haystacks = {
        "broker (Redis keys, kombu bodies)": broker + redis_dump(broker_url),
        "cache (Redis)": redis_dump(django_settings.CACHES["default"].get("LOCATION", ""))
        if str(django_settings.CACHES["default"].get("LOCATION", "")).startswith("redis")
        else [],
        "database (every table)": database_dump(),
        "smtpd log": [server.logs().encode()],
        "worker log": [(tmp_path / "worker.log").read_bytes()],
        "this process's log records": [caplog.text.encode()],
        "event spool": [p.read_bytes() for p in server.tmp.rglob("*") if p.is_file() and "spool" in str(p)],
    }
    secrets = {
        "first mailbox password": FIRST_PASSWORD,
        "mailbox password": MAILBOX_PASSWORD,
        "wrong password": WRONG_PASSWORD,
        "app password": app_password,
        "OAuth access token": access_token,
        "OAuth client secret": "Client-Secret-Walnut-62-ember",
        "staff password": STAFF_PASSWORD,
        "staff TOTP secret": staff_totp,
    }
    found = leaks(haystacks, secrets)
    assert not found, "\n".join(found)
    # The sweep looked at real data: events, hashes and logs are there.
    assert any(ADDRESS.encode() in row for row in haystacks["database (every table)"])  # the events are there
    assert haystacks["smtpd log"][0] and haystacks["worker log"][0]


def _events_in(body: bytes) -> list:
    try:
        decoded = json.loads(body)
    except ValueError:
        return []
    if isinstance(decoded, list) and decoded and isinstance(decoded[0], list):
        batch = decoded[0][0] if decoded[0] and isinstance(decoded[0][0], list) else []
        return [e for e in batch if isinstance(e, dict) and "mechanism" in e]
    return []


@pytest.mark.embedded
@pytest.mark.parametrize("prefix", [b"", b"\x00", b"\x00u\x00", b"user=carol\x01auth=Bearer "])
def test_the_detector_finds_a_secret_inside_any_base64_blob(prefix):
    blob = base64.b64encode(prefix + MAILBOX_PASSWORD.encode() + b"\x01\x01")
    assert leaks({"blob": [blob]}, {"password": MAILBOX_PASSWORD})
    assert not leaks({"blob": [base64.b64encode(prefix + b"something-else-entirely-000")]}, {"p": MAILBOX_PASSWORD})
