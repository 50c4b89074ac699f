"""Back-test: generate a labelled trace, replay it through the real commands, score the alerts.

    DATABASE_URL=postgres://... CACHE_URL=redis://... SECRET_KEY=... \
        python bench/replay_eval.py --mailboxes 1000 --days 14

Runs import_networks, import_auth_events and export_alerts exactly as the
independent evaluation does, on a freshly flushed database (it DELETES the
monitoring tables of the database it points at: use a scratch database).
"""

import argparse
import io
import ipaddress
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mailadmin.settings")

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402

from mailadmin.monitoring.models import Alert, AuthEvent, Block, NamedNetwork, Rollup, UserBaseline  # noqa: E402
from tests.monitoring.fixtures.trace import build_trace, score, write_files  # noqa: E402


def run(mailboxes, days, seed, batch_seconds=900.0, quiet=True):
    for model in (Block, Alert, AuthEvent, Rollup, UserBaseline, NamedNetwork):
        model.objects.all().delete()
    from mailadmin.monitoring import blocks, detectors, enrich

    blocks._snapshot.invalidate_local()
    blocks._recent.clear()
    enrich._named.invalidate()
    detectors._last_surge_minute["value"] = None
    trace = build_trace(mailboxes=mailboxes, days=days, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        events_path, nets_path = Path(tmp) / "events.jsonl", Path(tmp) / "networks.csv"
        write_files(trace, events_path, nets_path)
        call_command("import_networks", str(nets_path), stdout=io.StringIO())
        started = time.monotonic()
        out = io.StringIO()
        call_command(
            "import_auth_events",
            str(events_path),
            "--as-of-original-time",
            "--quiet",
            f"--batch-seconds={batch_seconds}",
            stdout=out,
            stderr=io.StringIO(),
        )
        elapsed = time.monotonic() - started
        export = io.StringIO()
        call_command("export_alerts", stdout=export)
    alerts = [json.loads(line) for line in export.getvalue().splitlines() if line.strip()]
    blocked = list(Block.objects.values_list("value", flat=True))
    result = score(trace, alerts, blocked)
    benign = set(result["benign_blocked"])
    result["benign_blocks"] = sorted(
        {
            (b.rule, b.kind, b.value, b.username)
            for b in Block.objects.all()
            if any(ipaddress.ip_address(ip) in ipaddress.ip_network(b.value, strict=False) for ip in benign)
        }
    )
    result.update(
        events=len(trace.events),
        replay_seconds=round(elapsed, 1),
        replay_rate=round(len(trace.events) / elapsed),
        alerts=len(alerts),
        by_rule={r: sum(1 for a in alerts if a["rule"] == r) for r in sorted({a["rule"] for a in alerts})},
    )
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--mailboxes", type=int, default=300)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--seed", type=int, default=1)
    # The command's own default, as an evaluation would run it.
    parser.add_argument("--batch-seconds", type=float, default=900.0)
    args = parser.parse_args()
    print(json.dumps(run(args.mailboxes, args.days, args.seed, args.batch_seconds), indent=2, default=str))
