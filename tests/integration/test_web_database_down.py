"""The web while PostgreSQL is unreachable: a clear 503 maintenance page (with
Retry-After), never a traceback or a generic 500, and it recovers by itself as soon
as the database answers again - no restart. The outage is made by pointing this
process's connection at a closed loopback port (the suite's PostgreSQL is shared,
so it is never stopped)."""

import socket

import pytest
from django.db import connection
from django.test import Client

from mailadmin.staff.accounts import create_staff
from mailadmin.staff.models import Role
from tests.conftest import add_totp

pytestmark = pytest.mark.skipif("connection.vendor != 'postgresql'")


def closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def test_database_outage_is_a_maintenance_page_and_recovers(transactional_db):
    user, _ = create_staff("outage@staff.example", role=Role.SUPERADMIN)
    add_totp(user)
    client = Client(raise_request_exception=False)
    client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
    assert client.get("/").status_code == 200

    saved = dict(connection.settings_dict)
    connection.close()
    connection.settings_dict.update(HOST="127.0.0.1", PORT=closed_port())
    try:
        for path in ("/", "/domains/", "/accounts/login/"):
            response = client.get(path)
            assert response.status_code == 503, path
            assert response["Retry-After"] == "30"
            assert b"The database is unavailable" in response.content and b"Traceback" not in response.content
    finally:
        connection.close()
        connection.settings_dict.update(HOST=saved["HOST"], PORT=saved["PORT"])
    # Back without a restart: the next request reconnects.
    assert client.get("/").status_code == 200
