import io
import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from mailadmin.monitoring.models import Alert, AuthEvent, NamedNetwork

from .factories import BASE, event

HEADER = "network,name,kind,country,city,latitude,longitude,asn,as_name\n"


def run(*args):
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@pytest.mark.embedded
@pytest.mark.django_db
def test_import_networks_reports_bad_rows_by_line_and_keeps_the_good(tmp_path):
    path = tmp_path / "nets.csv"
    path.write_text(
        HEADER
        + "192.0.2.0/24,Berlin HQ,office,DE,Berlin,52.52,13.40,3320,Deutsche Telekom\n"
        + "not-a-net,Bad,office,DE,,,,,\n"
        + "198.51.100.0/24,VPN,spaceship,US,,,,,\n"
        + "203.0.113.0/24,Cloud,hosting,IE,Dublin,53.3,-6.2,AS64500,ExampleCloud\n"
        + "10.0.0.0/8,Lat,office,DE,,123,0,,\n"
    )
    out, err = run("import_networks", str(path))
    assert "2 created" in out and "3 bad" in out
    assert "line 3:" in err and "line 4:" in err and "line 6:" in err
    cloud = NamedNetwork.objects.get(network="203.0.113.0/24")
    assert (cloud.kind, cloud.asn, cloud.latitude) == ("hosting", 64500, 53.3)
    # round trip through the export
    exported, _ = run("export_networks")
    assert exported.splitlines()[0] == HEADER.strip()
    assert "192.0.2.0/24,Berlin HQ,office,DE,Berlin,52.52,13.4,3320,Deutsche Telekom" in exported


@pytest.mark.django_db
def test_import_networks_refuses_a_wrong_header(tmp_path):
    path = tmp_path / "nets.csv"
    path.write_text("cidr,name\n192.0.2.0/24,x\n")
    with pytest.raises(CommandError, match="header must be exactly"):
        run("import_networks", str(path))


@pytest.mark.django_db
def test_named_networks_come_before_geoip(tmp_path):
    path = tmp_path / "nets.csv"
    path.write_text(HEADER + "8.8.8.0/24,Partner relay,trusted,CH,Zurich,47.37,8.54,,\n")
    run("import_networks", str(path))
    jsonl = tmp_path / "e.jsonl"
    jsonl.write_text(json.dumps(event("8.8.8.8", result="success")) + "\n")
    run("import_auth_events", str(jsonl), "--quiet")
    row = AuthEvent.objects.get()
    assert (row.network_name, row.network_kind, row.country, row.latitude) == ("Partner relay", "trusted", "CH", 47.37)
    assert row.as_name  # filled in from GeoIP


@pytest.mark.django_db
def test_replay_skips_bad_lines_by_number_and_is_idempotent_then_exports(tmp_path):
    attack = [
        event(
            "203.0.113.66",
            "ann@a.example",
            ts=BASE.replace(second=i * 3),
            pw_fp=i,
            id=f"00000000-0000-4000-8000-{i:012d}",
        )
        for i in range(15)
    ]
    lines = [json.dumps(e) for e in attack[:5]] + ["{broken json", '"a string"', json.dumps(event(ts="nope"))]
    lines += [json.dumps(e) for e in attack[5:]]
    path = tmp_path / "trace.jsonl"
    path.write_text("\n".join(lines) + "\n")
    out, err = run("import_auth_events", str(path), "--as-of-original-time", "--quiet")
    assert "15 inserted" in out
    assert "line 6:" in err and "line 7:" in err and "line 8:" in err
    out, _ = run("import_auth_events", str(path), "--quiet")
    assert "0 inserted" in out and "15 duplicate" in out
    assert AuthEvent.objects.count() == 15
    assert Alert.objects.filter(rule="ip_bruteforce").count() == 1

    exported, _ = run("export_alerts")
    rows = [json.loads(line) for line in exported.splitlines()]
    brute = next(r for r in rows if r["rule"] == "ip_bruteforce")
    assert brute["severity"] == "high" and brute["status"] == "open" and brute["count"] >= 10
    assert brute["first_seen"] == "2026-03-02T09:00:00Z" and brute["last_seen"].endswith("Z")
    assert brute["entity"]["ip"] == "203.0.113.66" and brute["entity"]["prefix"] == "203.0.113.0/24"
    out_file = tmp_path / "alerts.jsonl"
    run("export_alerts", "--output", str(out_file), "--min-severity", "high")
    assert all(json.loads(line)["severity"] in ("high", "critical") for line in out_file.read_text().splitlines())
