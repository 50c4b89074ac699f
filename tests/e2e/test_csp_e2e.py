"""In a real Chromium, the strict CSP (no inline scripts or styles) breaks nothing
and reports nothing: the login page, allauth's MFA pages (TOTP step, set-up pages,
WebAuthn with its scripts), the dashboard and every monitoring page there is."""

import pytest
from django.urls import NoReverseMatch, reverse

from tests.e2e.conftest import totp_code

pytestmark = pytest.mark.e2e

# Collects violations from the page itself; init scripts run outside the page's CSP.
RECORD_VIOLATIONS = """
window.__csp = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.__csp.push(e.violatedDirective + ' blocked ' + (e.blockedURI || 'inline') + ' at ' + e.sourceFile);
});
"""

# Pages other branches add; visited when they exist in this build.
OPTIONAL_PAGES = [
    "monitoring:overview",
    "monitoring:events",
    "monitoring:alerts",
    "mailboxes:list",
    "oauth:application_list",
    "portal:login",
]


class ViolationLog:
    def __init__(self, page):
        self.page = page
        self.console = []
        page.add_init_script(RECORD_VIOLATIONS)
        page.on("console", self._on_console)

    def _on_console(self, message):
        text = message.text
        if "Content Security Policy" in text or "Refused to" in text:
            self.console.append(text)

    def visit(self, url):
        response = self.page.goto(url)
        assert response.ok, f"{url}: HTTP {response.status}"
        assert "Content-Security-Policy" in {k.title() for k in response.headers}, url
        self.page.wait_for_load_state("networkidle")
        self.check(url)

    def check(self, where):
        in_page = self.page.evaluate("window.__csp || []")
        assert not in_page and not self.console, f"CSP violations on {where}: {in_page + self.console}"


def test_no_csp_violation_on_login_mfa_dashboard_and_monitoring(page, live_server, e2e_superadmin):
    log = ViolationLog(page)
    staff = e2e_superadmin
    log.visit(f"{live_server.url}{reverse('account_login')}")
    page.fill("input[name=login]", staff.user.email)
    page.fill("input[name=password]", staff.password)
    page.click("button[type=submit]")
    page.wait_for_url("**/accounts/2fa/authenticate/")
    page.wait_for_load_state("networkidle")
    log.check("the TOTP step")
    page.fill("input[name=code]", totp_code(staff.totp_secret))
    page.click("button[type=submit]:has-text('Sign In')")
    page.wait_for_url(f"{live_server.url}/")
    page.wait_for_load_state("networkidle")
    log.check("the dashboard")

    pages = [
        reverse("mfa_index"),
        reverse("mfa_add_webauthn"),  # loads allauth's WebAuthn scripts and JSON data blocks
        reverse("mfa_generate_recovery_codes"),
        reverse("accounts:domain_list"),
        reverse("staff:staff_list"),
        reverse("staff:audit_log"),
    ]
    for name in OPTIONAL_PAGES:
        try:
            pages.append(reverse(name))
        except NoReverseMatch:
            continue
    for path in pages:
        log.visit(f"{live_server.url}{path}")

    # The navbar dropdown (Bootstrap's JS) still works under the policy.
    page.click("nav .dropdown-toggle")
    assert page.locator("nav .dropdown-menu").is_visible()
    log.check("the navbar dropdown")
