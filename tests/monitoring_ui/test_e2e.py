"""The dashboard in Debian's Chromium against the live server, with events ingested for real."""

import datetime as dt
import json
from pathlib import Path

import pytest
from django.utils import timezone

from mailadmin.monitoring.models import Alert, AuthEvent, Block, Result
from mailadmin.staff.accounts import create_staff
from mailadmin.staff.models import Role
from tests.conftest import add_totp
from tests.e2e.conftest import E2E_PASSWORD, StaffLogin, login
from tests.monitoring.factories import event
from tests.monitoring_ui.conftest import ingest

pytestmark = pytest.mark.e2e
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture
def staff(transactional_db):
    from mailadmin.accounts.models import Domain

    domain_a = Domain.objects.create(name="a.example")
    domain_b = Domain.objects.create(name="b.example")
    out = {}
    for key, email, role, domains in [
        ("root", "e2e-root@staff.example", Role.SUPERADMIN, []),
        ("b", "e2e-admin-b@staff.example", Role.DOMAIN_ADMIN, [domain_b]),
    ]:
        user, password = create_staff(email, role=role, domains=domains, password=E2E_PASSWORD)
        out[key] = StaffLogin(user, password, add_totp(user))
    out["domains"] = (domain_a, domain_b)
    return out


@pytest.fixture
def traffic(staff):
    """A day of attempts on a.example: failures every 20 minutes, a burst, some successes."""
    now = timezone.now()
    events = []
    for i in range(72):
        ts = now - dt.timedelta(minutes=20 * i + 3)
        events.append(event(client_ip=f"203.0.113.{i % 5 + 1}", username=f"user{i % 9}@a.example", ts=ts, pw_fp=i))
        if i % 4 == 0:
            events.append(event(client_ip="198.51.100.20", username="ann@a.example", result="success", ts=ts))
    events += [
        event(client_ip="203.0.113.66", username="boss@a.example", ts=now - dt.timedelta(hours=2)) for _ in range(20)
    ]
    ingest(*events)
    return now


def chart_state(page, name="timeline"):
    page.wait_for_function(
        "name => window.Chart && Chart.getChart(document.querySelector(`canvas[data-chart=${name}]`))", arg=name
    )
    return page.evaluate(
        """name => {
            const chart = Chart.getChart(document.querySelector(`canvas[data-chart=${name}]`));
            const raw = JSON.parse(document.getElementById('chart-data-json').textContent)[name];
            return {points: chart.data.labels.length, failed: chart.data.datasets[0].data, labels: raw.labels,
                    colour: chart.data.datasets[0].borderColor};
        }""",
        name,
    )


def test_overview_chart_matches_the_database(page, live_server, staff, traffic):
    login(page, live_server, staff["root"])
    page.set_viewport_size({"width": 1366, "height": 900})
    page.goto(f"{live_server.url}/monitoring/?range=24h")
    state = chart_state(page)
    assert state["points"] == 96
    assert state["colour"].lower() == "#c0392b"
    for label, failed in zip(state["labels"], state["failed"], strict=True):
        start = dt.datetime.fromisoformat(label)
        expected = (
            AuthEvent.objects.filter(ts__gte=start, ts__lt=start + dt.timedelta(minutes=15))
            .exclude(result=Result.SUCCESS)
            .count()
        )
        assert failed == expected, label
    assert sum(state["failed"]) == 72 + 20
    assert page.locator("[data-testid=count-failures]").inner_text() == "92"
    assert page.locator("[data-testid=table-top_ips] tbody tr").first.locator("td").first.inner_text() == "203.0.113.66"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "overview.png"), full_page=True)
    # The page polls: a new failure shows up in the counter and the chart without a reload.
    ingest(event(client_ip="203.0.113.66", username="boss@a.example", ts=timezone.now()))
    page.wait_for_function(
        "() => document.querySelector('[data-testid=count-failures]').textContent.trim() === '93'", timeout=20_000
    )
    page.wait_for_function(  # the chart redraws once the swapped fragment has settled
        """() => Chart.getChart(document.querySelector('canvas[data-chart=timeline]'))
                 .data.datasets[0].data.reduce((a, b) => a + b, 0) === 93"""
    )
    # Phone width: the same page still renders its chart.
    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()
    assert chart_state(page)["points"] == 96
    page.screenshot(path=str(ARTIFACTS / "overview-phone.png"), full_page=True)


def test_filtering_the_event_search(page, live_server, staff, traffic):
    login(page, live_server, staff["root"])
    page.goto(f"{live_server.url}/monitoring/events/")
    assert page.locator("[data-testid=event-row]").count() == 50
    page.fill("input[name=ip]", "203.0.113.66")
    page.click("button:has-text('Search')")
    page.wait_for_url("**ip=203.0.113.66**")
    assert page.locator("[data-testid=event-row]").count() == 20
    page.fill("input[name=ip]", "203.0.113.0/33")
    page.click("button:has-text('Search')")
    assert "not an IP address or CIDR" in page.locator("form[data-testid=event-filters]").inner_text()


def test_acknowledging_an_alert(page, live_server, staff, traffic):
    now = timezone.now()
    alert = Alert.objects.create(
        rule="account_bruteforce",
        entity_key="user:boss@a.example",
        entity={"username": "boss@a.example", "ip": "203.0.113.66"},
        severity="high",
        domain_name="a.example",
        first_seen=now - dt.timedelta(hours=2, minutes=1),
        last_seen=now - dt.timedelta(hours=2),
        count=15,
        window_seconds=3600,
        verdict="15 different passwords tried for boss@a.example from 203.0.113.66",
        evidence=[{"ts": (now - dt.timedelta(hours=2)).isoformat(), "ip": "203.0.113.66", "result": "bad_credentials"}],
    )
    login(page, live_server, staff["root"])
    page.goto(f"{live_server.url}/monitoring/alerts/")
    page.click(f"a[href='/monitoring/alerts/{alert.pk}/']")
    state = chart_state(page)
    assert sum(state["failed"]) == 20
    page.click("button:has-text('Acknowledge')")
    page.wait_for_selector("text=Alert acknowledged")
    assert page.locator("[data-testid=alert-status]").inner_text() == "Acknowledged"
    alert.refresh_from_db()
    assert alert.status == "acknowledged" and alert.status_changed_by == "e2e-root@staff.example"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "alert-detail.png"), full_page=True)


def test_unblocking_an_ip(page, live_server, staff, traffic):
    block = Block.objects.create(
        kind="ip", value="203.0.113.66", reason="IP brute force", rule="ip_bruteforce",
        expires_at=timezone.now() + dt.timedelta(hours=1),
    )  # fmt: skip
    login(page, live_server, staff["root"])
    page.goto(f"{live_server.url}/monitoring/blocks/")
    assert page.locator("[data-testid=block-row]").count() == 1
    page.click(f"[data-testid=unblock-{block.pk}]")
    page.wait_for_selector("text=Unblocked 203.0.113.66")
    assert page.locator("[data-testid=no-blocks]").is_visible()
    block.refresh_from_db()
    assert block.lifted_at is not None and block.lifted_by == "e2e-root@staff.example"


def test_admin_of_another_domain_sees_none_of_it(page, live_server, staff, traffic):
    alert = Alert.objects.create(
        rule="spray", entity_key="user:boss@a.example", entity={"username": "boss@a.example"}, severity="high",
        domain_name="a.example", first_seen=timezone.now(), last_seen=timezone.now(),
    )  # fmt: skip
    login(page, live_server, staff["b"])
    page.goto(f"{live_server.url}/monitoring/?range=24h")
    page.wait_for_selector("[data-testid=count-failures]")
    assert page.locator("[data-testid=count-failures]").inner_text() == "0"
    assert page.locator("canvas[data-chart=timeline]").is_hidden()  # empty state instead
    assert page.locator("text=No login attempts in this range yet.").is_visible()
    assert "a.example" not in page.content()
    page.goto(f"{live_server.url}/monitoring/events/")
    assert page.locator("[data-testid=no-events]").is_visible()
    assert page.goto(f"{live_server.url}/monitoring/alerts/{alert.pk}/").status == 404
    assert page.goto(f"{live_server.url}/monitoring/mailboxes/boss@a.example/").status == 404
    for name in ["timeline", "top_ips", "top_users", "reasons", "countries", "mechanisms", "listeners"]:
        data = json.loads(page.request.get(f"{live_server.url}/monitoring/charts/{name}.json?range=30d").text())
        assert "a.example" not in json.dumps(data) and "203.0.113" not in json.dumps(data), name
        csv_text = page.request.get(f"{live_server.url}/monitoring/charts/{name}.csv?range=30d").text()
        assert "a.example" not in csv_text and "203.0.113" not in csv_text, name
    export = page.request.get(f"{live_server.url}/monitoring/events/export.csv?start=2000-01-01T00:00").text()
    assert export.count("\n") == 1  # the header only
