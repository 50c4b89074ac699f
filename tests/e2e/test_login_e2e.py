import pytest

from tests.e2e.conftest import login

pytestmark = pytest.mark.e2e


def test_staff_signs_in_with_totp_and_creates_a_domain(page, live_server, e2e_superadmin):
    login(page, live_server, e2e_superadmin)
    assert page.locator("h1").inner_text() == "Overview"

    page.click("nav >> text=Domains")
    page.click("text=Add domain")
    page.fill("input[name=name]", "Bücher.Example")
    page.fill("input[name=max_mailboxes]", "25")
    page.click("button:has-text('Create domain')")
    page.wait_for_url("**/domains/*/")
    assert "bücher.example" in page.locator("h1").inner_text()

    page.click("nav >> text=Domains")
    assert page.locator("[data-testid=domain-link]").all_inner_texts() == ["bücher.example"]
