"""deploy/: the systemd units, the HAProxy sample and the event-table partitioning
script are what README "Production deployment" and "Scaling out" tell people to
use, so they are checked here (the SQL against the real PostgreSQL of the suite)."""

import configparser
import re
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


def unit(name):
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read_string((DEPLOY / "systemd" / name).read_text())
    return parser


@pytest.mark.parametrize("path", sorted((DEPLOY / "systemd").glob("*.service")), ids=lambda p: p.name)
def test_every_service_runs_as_mailadmin_with_the_environment_file(path):
    service = unit(path.name)["Service"]
    assert service["User"] == "mailadmin" and service["EnvironmentFile"] == "/etc/mailadmin/env"
    assert service["ExecStart"].startswith(("/srv/mailadmin/.venv/bin/", "/bin/sh -c"))
    assert service["NoNewPrivileges"] == "true" and service["ProtectSystem"] == "strict"


def test_smtpd_unit_runs_workers_and_drains_on_sigterm():
    service = unit("mailadmin-smtpd.service")["Service"]
    assert re.search(r"-m smtpd --workers \d+", service["ExecStart"])
    assert service["KillSignal"] == "SIGTERM" and int(service["TimeoutStopSec"]) >= 30
    assert "CAP_NET_BIND_SERVICE" in service["AmbientCapabilities"]


def test_one_worker_unit_per_queue_and_the_queues_exist():
    from django.conf import settings

    service = unit("mailadmin-worker@.service")["Service"]
    assert "-Q %i" in service["ExecStart"] and "-n %i@%H" in service["ExecStart"]
    routed = {route["queue"] for route in getattr(settings, "CELERY_TASK_ROUTES", {}).values()}
    assert routed <= {"ingest", "alerts", "default"}  # every routed queue has its README instance


def test_timers_start_their_services():
    for name in ("mailadmin-backup", "mailadmin-partitions"):
        assert "OnCalendar" in unit(f"{name}.timer")["Timer"]
        assert (DEPLOY / "systemd" / f"{name}.service").exists()


def test_haproxy_sends_proxy_v2_to_several_smtpd_nodes():
    config = (DEPLOY / "haproxy" / "haproxy.cfg").read_text()
    assert re.search(r"bind :587", config) and re.search(r"bind :465", config) and "mode tcp" in config
    backends = {b.split()[0]: b for b in re.split(r"\nbackend ", config)[1:]}
    for name, backend in backends.items():
        servers = re.findall(r"^\s+server \S+ \S+:(\d+)(.*)$", backend, flags=re.M)
        assert len(servers) >= 2, name
        for port, options in servers:
            # The smtpd reads PROXY headers on its STARTTLS listeners (587) only.
            assert ("send-proxy-v2" in options) == (port == "587"), (name, port)


@pytest.mark.skipif("connection.vendor != 'postgresql'")
def test_partitioning_script_keeps_events_and_idempotency(db):
    from mailadmin.monitoring.models import AuthEvent

    def event(event_id=None, days_ago=0):
        return AuthEvent.objects.create(
            event_id=event_id or uuid.uuid4(),
            ts=timezone.now() - timedelta(days=days_ago),
            client_ip="192.0.2.7",
            prefix="192.0.2.0/24",
            result="success",
        )

    baseline = AuthEvent.objects.count()  # events other tests left committed
    old = [event(days_ago=d) for d in (0, 2, 45)]
    with connection.cursor() as cursor:  # inside the test's transaction: rolled back afterwards
        cursor.execute((DEPLOY / "postgresql" / "partition_auth_events.sql").read_text())
        cursor.execute("SELECT count(*) FROM pg_inherits WHERE inhparent = 'monitoring_authevent'::regclass")
        assert cursor.fetchone()[0] >= 9  # history + yesterday .. a week ahead
    assert AuthEvent.objects.count() == baseline + 3
    fresh = event()
    assert fresh.pk > max(e.pk for e in old)  # ids continue after the old table's
    with pytest.raises(IntegrityError), transaction.atomic():
        AuthEvent.objects.create(
            event_id=fresh.event_id, ts=fresh.ts, client_ip="192.0.2.7", prefix="192.0.2.0/24", result="success"
        )
    with connection.cursor() as cursor:
        cursor.execute("SELECT mailadmin_event_partitions(1, 7)")  # drops daily partitions before yesterday
    assert AuthEvent.objects.filter(pk__in=[e.pk for e in old] + [fresh.pk]).count() == 4
