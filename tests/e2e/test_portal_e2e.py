"""A mailbox owner in Debian's Chromium: signs in to the portal, creates an app
password, uses it with smtplib against the real smtpd, and finds that login in
their history (events go smtpd -> Redis -> a real Celery worker -> database)."""

import os
import select
import signal
import smtplib
import ssl
import subprocess
import sys
import time

import pytest
import redis
from django.conf import settings

from mailadmin.accounts.models import Domain
from mailadmin.monitoring.models import AuthEvent
from tests.oauth.helpers import PASSWORD, make_mailbox
from tests.smtpd import conftest as smtpd_harness
from tests.smtpd.conftest import smtpd_factory  # noqa: F401

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

ADDRESS = "owner@portal.example"


@pytest.fixture(scope="module")
def smtpd_server(smtpd_factory):  # noqa: F811
    return smtpd_factory()


@pytest.fixture
def ingest_worker(transactional_db, tmp_path):
    """`celery worker` on the ingest queue, against the test database and broker."""
    if not settings.CELERY_BROKER_URL.startswith("redis"):
        pytest.skip("needs the Redis broker")
    redis.Redis.from_url(settings.CELERY_BROKER_URL).delete("ingest")  # earlier tests' events
    database_url = smtpd_harness.server_database_url()
    env = dict(os.environ, DATABASE_URL=database_url, VAR_DIR=str(tmp_path / "var"), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "celery", "-A", "mailadmin", "worker", "-Q", "ingest", "-P", "solo"]
    cmd += ["--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel=INFO"]
    proc = subprocess.Popen(
        cmd,
        cwd=smtpd_harness.ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready and " ready." in proc.stdout.readline():
            break
        assert proc.poll() is None, "the Celery worker exited"
    else:
        proc.kill()
        pytest.fail("the Celery worker did not start")
    yield proc
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _send_with(smtpd_server, secret):
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", smtpd_server.starttls, timeout=10) as client:
        client.starttls(context=context)
        client.login(ADDRESS, secret)
        client.sendmail(ADDRESS, ["friend@elsewhere.example"], b"Subject: from my phone\r\n\r\nhello\r\n")


def test_owner_creates_an_app_password_uses_it_and_sees_the_login(page, live_server, smtpd_server, ingest_worker):
    domain = Domain.objects.create(name="portal.example")
    make_mailbox(domain, "owner")

    page.goto(f"{live_server.url}/my/login/")
    page.fill("input[name=address]", ADDRESS)
    page.fill("input[name=password]", PASSWORD)
    page.click("button:has-text('Sign in')")
    page.wait_for_url(f"{live_server.url}/my/")
    assert page.locator("[data-testid=portal-address]").inner_text() == ADDRESS

    page.click("[data-testid=portal-nav] >> text=App passwords")
    page.fill("input[name=name]", "Phone")
    page.click("button:has-text('Create app password')")
    secret = page.locator("[data-testid=new-app-password]").inner_text()
    assert len(secret.replace(" ", "").replace("-", "")) >= 16
    assert "Phone" in page.locator("[data-testid=app-password-list]").inner_text()

    _send_with(smtpd_server, secret)

    deadline = time.monotonic() + 30
    while not AuthEvent.objects.filter(username=ADDRESS, result="success").exclude(listener=None).exists():
        assert time.monotonic() < deadline, "the SMTP login never reached the database"
        time.sleep(0.3)

    page.click("[data-testid=portal-nav] >> text=Sign-in history")
    rows = page.locator("[data-testid=history-row]").all_inner_texts()
    smtp_rows = [row for row in rows if f"port {smtpd_server.starttls}" in row]
    assert smtp_rows, rows
    assert "PLAIN" in smtp_rows[0] and "success" in smtp_rows[0] and "127.0.0.1" in smtp_rows[0]
    # The app password's page now shows when it was last used.
    page.click("[data-testid=portal-nav] >> text=App passwords")
    assert "never" not in page.locator("[data-testid=app-password-list] tbody tr").first.inner_text()
