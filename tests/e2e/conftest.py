"""Shared Playwright fixtures (`browser`, `page`, `e2e_superadmin`, `login`): Debian's
Chromium (never a downloaded browser) against pytest-django's live_server, and a
helper that signs a staff user in with password + TOTP.

    def test_x(page, live_server, e2e_staff):
        login(page, live_server, e2e_staff)
"""

import os
import time

import pytest
from allauth.mfa.totp.internal.auth import format_hotp_value, hotp_value

from mailadmin.staff.accounts import create_staff
from mailadmin.staff.models import Role
from tests.conftest import add_totp

# Playwright's sync API runs an event loop in this thread; Django's ORM (live_server
# fixtures, test set-up) refuses to run beside one unless told it is safe here.
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
E2E_PASSWORD = "e2e-Password-correct-horse"


def totp_code(secret: str) -> str:
    return format_hotp_value(hotp_value(secret, int(time.time()) // 30))


@pytest.fixture(autouse=True)
def _live_server_closes_its_connections():
    # live_server handles each request in a new thread; with persistent connections
    # (CONN_MAX_AGE) they would outlive the test and block dropping the test database.
    from django.db import connections

    saved = connections.settings["default"]["CONN_MAX_AGE"]
    connections.settings["default"]["CONN_MAX_AGE"] = 0
    yield
    connections.settings["default"]["CONN_MAX_AGE"] = saved


# One Playwright and one Chromium for the whole run: other test packages import these
# fixtures into their conftest (each import is its own session fixture), and a second
# sync_playwright() in the same thread fails ("Sync API inside the asyncio loop").
_SHARED = {}


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    if "browser" not in _SHARED:
        _SHARED["playwright"] = sync_playwright().start()
        _SHARED["browser"] = _SHARED["playwright"].chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        _SHARED["users"] = 0
    _SHARED["users"] += 1
    yield _SHARED["browser"]
    _SHARED["users"] -= 1
    if _SHARED["users"] == 0:
        _SHARED.pop("browser").close()
        _SHARED.pop("playwright").stop()


@pytest.fixture
def page(browser):
    context = browser.new_context()
    context.set_default_timeout(15_000)
    page = context.new_page()
    yield page
    context.close()


class StaffLogin:
    def __init__(self, user, password, totp_secret):
        self.user, self.password, self.totp_secret = user, password, totp_secret


@pytest.fixture
def e2e_superadmin(transactional_db):
    user, password = create_staff("e2e-root@staff.example", role=Role.SUPERADMIN, password=E2E_PASSWORD)
    return StaffLogin(user, password, add_totp(user))


def login(page, live_server, staff: StaffLogin):
    """Sign in through the real pages: email + password, then the TOTP code."""
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("input[name=login]", staff.user.email)
    page.fill("input[name=password]", staff.password)
    page.click("button[type=submit]")
    page.wait_for_url("**/accounts/2fa/authenticate/")
    page.fill("input[name=code]", totp_code(staff.totp_secret))
    page.click("button[type=submit]:has-text('Sign In')")
    page.wait_for_url(f"{live_server.url}/")
