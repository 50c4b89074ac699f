import datetime as dt

import pytest
from django.urls import reverse

from mailadmin.monitoring import charts
from mailadmin.monitoring.models import AuthEvent, Result

CHARTS = list(charts.CHARTS)


def test_it_requires_login(client, db):
    response = client.get(reverse("monitoring:overview"))
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]
    for name in ["monitoring:overview_fragment", "monitoring:events", "monitoring:alerts", "monitoring:blocks"]:
        assert "/accounts/login/" in client.get(reverse(name))["Location"]
    assert "/accounts/login/" in client.get(reverse("monitoring:chart_json", args=["timeline"]))["Location"]


@pytest.mark.embedded
def test_it_shows_the_page_with_the_timeline_canvas(super_client, attack):
    response = super_client.get(reverse("monitoring:overview"))
    assert response.status_code == 200
    assert b'data-chart="timeline"' in response.content
    assert b"chart.umd.min.js" in response.content
    assert b"<script>" not in response.content  # no inline scripts


@pytest.mark.embedded
def test_timeline_json_counts_failed_and_successful(super_client, attack):
    data = super_client.get(reverse("monitoring:chart_json", args=["timeline"]), {"range": "24h"}).json()
    assert len(data["labels"]) == 96 == len(data["series"]["failed"])
    assert sum(data["series"]["failed"]) == 7
    assert sum(data["series"]["success"]) == 2
    assert data["series"]["failed"] == [row[1] for row in data["rows"]]


@pytest.mark.parametrize(("preset", "points"), [("1h", 60), ("24h", 96), ("7d", 168), ("30d", 120)])
def test_each_preset_has_its_number_of_points(super_client, attack, preset, points):
    data = super_client.get(reverse("monitoring:chart_json", args=["timeline"]), {"range": preset}).json()
    assert len(data["labels"]) == points
    assert sum(data["series"]["failed"]) == 7


def test_timeline_matches_the_database_per_bucket(super_client, attack):
    data = super_client.get(reverse("monitoring:chart_json", args=["timeline"]), {"range": "1h"}).json()
    for label, failed in zip(data["labels"], data["series"]["failed"], strict=True):
        start = dt.datetime.fromisoformat(label)
        expected = (
            AuthEvent.objects.filter(ts__gte=start, ts__lt=start + dt.timedelta(minutes=1))
            .exclude(result=Result.SUCCESS)
            .count()
        )
        assert failed == expected


def test_domain_admins_see_only_their_domains_in_every_chart(client_a, attack):
    data = client_a.get(reverse("monitoring:chart_json", args=["timeline"])).json()
    assert sum(data["series"]["failed"]) == 6
    assert sum(data["series"]["success"]) == 1
    for name in CHARTS:
        text = client_a.get(reverse("monitoring:chart_json", args=[name])).content.decode()
        assert "b.example" not in text and "192.0.2.77" not in text and "192.0.2.78" not in text, name
        csv_text = b"".join(client_a.get(reverse("monitoring:chart_csv", args=[name])).streaming_content).decode()
        assert "b.example" not in csv_text and "192.0.2.7" not in csv_text, name


def test_b_sees_none_of_a(client_b, attack):
    data = client_b.get(reverse("monitoring:chart_json", args=["timeline"])).json()
    assert sum(data["series"]["failed"]) == 1
    assert sum(data["series"]["success"]) == 1
    top_ips = client_b.get(reverse("monitoring:chart_json", args=["top_ips"])).json()
    assert [r[0] for r in top_ips["rows"]] == ["192.0.2.78"]
    fragment = client_b.get(reverse("monitoring:overview_fragment")).content.decode()
    assert "a.example" not in fragment and "203.0.113.9" not in fragment
    for name in CHARTS:
        text = client_b.get(reverse("monitoring:chart_json", args=[name])).content.decode()
        assert "a.example" not in text and "203.0.113.9" not in text, name
        csv_text = b"".join(client_b.get(reverse("monitoring:chart_csv", args=[name])).streaming_content).decode()
        assert "a.example" not in csv_text and "203.0.113.9" not in csv_text, name


def test_breakdowns_for_superadmin(super_client, attack):
    top = super_client.get(reverse("monitoring:chart_json", args=["top_ips"])).json()
    assert top["rows"][0][:1] == ["203.0.113.9"]
    assert top["rows"][0][3] == 6  # failures
    assert top["rows"][0][4] == 6  # users tried
    assert top["rows"][0][5] is False
    reasons = super_client.get(reverse("monitoring:chart_json", args=["reasons"])).json()
    assert dict((r[0], r[1]) for r in reasons["rows"]) == {"Bad Credentials": 6, "Unknown User": 1}
    mechanisms = super_client.get(reverse("monitoring:chart_json", args=["mechanisms"])).json()
    assert dict((r[0], r[1]) for r in mechanisms["rows"]) == {"PLAIN": 6, "LOGIN": 1}
    listeners = super_client.get(reverse("monitoring:chart_json", args=["listeners"])).json()
    assert listeners["rows"] == [["587 TLSv1.3", 7]]
    users = super_client.get(reverse("monitoring:chart_json", args=["top_users"])).json()
    assert len(users["rows"]) == 7


def test_fragment_has_counters_tables_and_chart_data(super_client, attack):
    response = super_client.get(reverse("monitoring:overview_fragment"), {"range": "1h"})
    html = response.content.decode()
    assert 'data-testid="count-failures">7<' in html
    assert 'data-testid="count-attackers">2<' in html
    assert 'id="chart-data-json"' in html
    assert 'hx-swap-oob="true"' in html
    assert "Block</button>" in html  # one-click block for superadmins


def test_auditor_sees_everything_but_gets_no_block_button(auditor_client, attack):
    html = auditor_client.get(reverse("monitoring:overview_fragment")).content.decode()
    assert 'data-testid="count-failures">7<' in html
    assert "Block</button>" not in html


def test_csv_download_has_the_table(super_client, attack):
    response = super_client.get(reverse("monitoring:chart_csv", args=["reasons"]), {"range": "7d"})
    assert response["Content-Type"].startswith("text/csv")
    body = b"".join(response.streaming_content).decode()
    assert body.splitlines()[0] == "Reason,Failures"
    assert "Bad Credentials,6" in body


def test_empty_state(super_client, db):
    data = super_client.get(reverse("monitoring:chart_json", args=["timeline"])).json()
    assert data["empty"] is True
    assert sum(data["series"]["failed"]) == 0
    assert super_client.get(reverse("monitoring:chart_json", args=["top_ips"])).json()["empty"] is True
    page = super_client.get(reverse("monitoring:overview")).content.decode()
    assert "No login attempts in this range yet." in page


@pytest.mark.parametrize(
    "params",
    [
        {"range": "custom", "start": "2026-03-02T10:00", "end": "2026-03-01T10:00"},
        {"range": "custom", "start": "yesterday", "end": "now"},
        {"range": "custom", "start": "2000-01-01T00:00", "end": "2026-01-01T00:00"},
        {"range": "99y"},
    ],
)
def test_nonsense_ranges_give_a_message(super_client, attack, params):
    page = super_client.get(reverse("monitoring:overview"), params)
    assert page.status_code == 200
    assert b"alert-warning" in page.content
    data = super_client.get(reverse("monitoring:chart_json", args=["timeline"]), params).json()
    assert "message" in data and len(data["labels"]) == 96


def test_custom_range_picks_a_bucket(super_client, attack):
    start = attack["ts"] - dt.timedelta(hours=2)
    end = attack["ts"] + dt.timedelta(hours=2)
    params = {"range": "custom", "start": start.strftime("%Y-%m-%dT%H:%M"), "end": end.strftime("%Y-%m-%dT%H:%M")}
    data = super_client.get(reverse("monitoring:chart_json", args=["timeline"]), params).json()
    assert data["range"]["bucket_seconds"] == 60
    assert 240 <= len(data["labels"]) <= 241
    assert sum(data["series"]["failed"]) == 7


def test_unknown_chart_is_404(super_client, db):
    assert super_client.get(reverse("monitoring:chart_json", args=["nope"])).status_code == 404
