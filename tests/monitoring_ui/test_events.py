import datetime as dt

import pytest
from django.urls import reverse

from tests.monitoring.factories import event
from tests.monitoring_ui.conftest import ingest

URL = "/monitoring/events/"


def rows(response):
    return response.context["events"]


@pytest.mark.embedded
def test_it_lists_the_last_day_scoped(client_a, attack):
    response = client_a.get(reverse("monitoring:events"))
    assert response.status_code == 200
    assert {e.username.split("@")[1] for e in rows(response)} == {"a.example"}
    assert len(rows(response)) == 7


def test_b_sees_none_of_a(client_b, attack):
    response = client_b.get(URL, {"ip": "203.0.113.9"})
    assert rows(response) == []
    html = client_b.get(URL).content.decode()
    assert "a.example" not in html and "203.0.113.9" not in html


@pytest.mark.parametrize(
    ("params", "count"),
    [
        ({"username": "user1@a.example"}, 1),
        ({"username": "USER*"}, 6),
        ({"ip": "203.0.113.9"}, 6),
        ({"ip": "203.0.113.0/24"}, 6),
        ({"ip": "203.0.0.0/16"}, 6),
        ({"ip": "192.0.2.64/26"}, 2),
        ({"result": "failed"}, 7),
        ({"result": "success"}, 2),
        ({"result": "unknown_user"}, 1),
        ({"mechanism": "login"}, 1),
        ({"listener": "587"}, 9),
        ({"listener": "465"}, 0),
        ({"tls": "none"}, 0),
        ({"tls": "tls"}, 9),
        ({"asn": "AS64500"}, 0),
        ({"country": "de"}, 0),
    ],
)
def test_filters(super_client, attack, params, count):
    response = super_client.get(URL, params)
    assert response.context["error"] is None
    assert len(rows(response)) == count


def test_time_range_filter(super_client, attack):
    t = attack["ts"]
    inside = {"start": (t - dt.timedelta(minutes=1)).isoformat(), "end": (t + dt.timedelta(minutes=1)).isoformat()}
    assert len(rows(super_client.get(URL, inside))) == 9
    before = {"start": "2001-01-01T00:00", "end": (t - dt.timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M")}
    assert len(rows(super_client.get(URL, before))) == 0


@pytest.mark.parametrize(
    "params",
    [
        {"ip": "300.1.2.3"},
        {"ip": "10.0.0.0/99"},
        {"asn": "ASX"},
        {"country": "Germany"},
        {"listener": "99999"},
        {"result": "hacked"},
        {"start": "2026-03-02T10:00", "end": "2026-03-01T10:00"},
        {"start": "tomorrow"},
    ],
)
def test_nonsense_filters_give_a_message(super_client, attack, params):
    response = super_client.get(URL, params)
    assert response.status_code == 200
    assert b'data-testid="filter-error"' in response.content
    assert rows(response) == []
    export = super_client.get(reverse("monitoring:events_export"), params)
    assert export.status_code == 400


def test_keyset_pagination_walks_every_row_once(super_client, db, now):
    ingest(*[event(username=f"u{i}@a.example", ts=now - dt.timedelta(seconds=i % 7)) for i in range(120)])
    seen, query, pages = [], {"username": "u*"}, 0
    while True:
        response = super_client.get(URL, query)
        seen += [e.pk for e in rows(response)]
        pages += 1
        if not response.context["next_query"]:
            break
        query = response.context["next_query"]
        query = dict(p.split("=", 1) for p in query.split("&"))
        from urllib.parse import unquote_plus

        query = {k: unquote_plus(v) for k, v in query.items()}
    assert pages == 3
    assert len(seen) == len(set(seen)) == 120


def test_a_domain_admins_filtered_pages_are_their_matching_events_newest_first(client_a, db, now):
    """A domain admin's page is read ids-first (covering index): same rows, same order, keyset intact."""
    from mailadmin.monitoring.models import AuthEvent

    events = []
    for i in range(240):
        ts = now - dt.timedelta(seconds=i % 40)  # many equal timestamps: the id breaks the ties
        domain = "a.example" if i % 3 else "b.example"
        result = "unknown_user" if i % 2 else "success"
        events.append(event(username=f"u{i}@{domain}", ts=ts, result=result, mechanism="LOGIN", tls="", pw_fp=i))
    ingest(*events)
    expected = list(
        AuthEvent.objects.filter(domain_name="a.example", result="unknown_user", mechanism="LOGIN", tls="")
        .order_by("-ts", "-id")
        .values_list("pk", flat=True)
    )
    seen, query = [], {"result": "unknown_user", "mechanism": "LOGIN", "tls": "none"}
    while True:
        response = client_a.get(URL, query)
        seen += [e.pk for e in rows(response)]
        if not response.context["next_query"]:
            break
        from urllib.parse import parse_qsl

        query = dict(parse_qsl(response.context["next_query"]))
    assert len(expected) == 80  # two pages
    assert seen == expected


def test_an_exact_username_search_finds_that_users_events_only_in_scope(client_a, attack):
    assert {e.username for e in rows(client_a.get(URL, {"username": "USER1@A.example"}))} == {"user1@a.example"}
    assert rows(client_a.get(URL, {"username": "bob@b.example"})) == []


def test_bad_cursor_and_huge_page_numbers_are_a_message(super_client, attack):
    response = super_client.get(URL, {"after": "garbage", "page": "999999999999"})
    assert response.status_code == 200
    assert b"not valid any more" in response.content
    assert len(rows(response)) == 9


def test_csv_export_streams_the_filtered_scoped_set(client_a, attack):
    response = client_a.get(reverse("monitoring:events_export"), {"result": "failed"})
    assert response.streaming
    lines = b"".join(response.streaming_content).decode().splitlines()
    assert lines[0].startswith("Time (UTC),IP,Username,Result")
    assert len(lines) == 1 + 6
    assert all("b.example" not in line for line in lines)


def test_csv_export_defuses_formulas(super_client, db, now):
    ingest(event(username="=cmd@a.example", helo="+SUM(A1)", ts=now))
    body = b"".join(super_client.get(reverse("monitoring:events_export")).streaming_content).decode()
    assert "'=cmd@a.example" in body and "'+SUM(A1)" in body
