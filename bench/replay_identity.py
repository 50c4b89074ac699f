"""Replay identity check: do two versions of the code give exactly the same results?

    # dump what this tree's code gives (a scratch database: it TRUNCATEs the monitoring tables)
    DATABASE_URL=postgres://.../scratch CACHE_URL=redis://... SECRET_KEY=... \
        python bench/replay_identity.py dump new.json --mailboxes 100 --days 3 --seed 1
    # the same with another checkout's code (e.g. main, from `git archive main | tar -x -C DIR`)
    python bench/replay_identity.py dump old.json --code DIR --mailboxes 100 --days 3 --seed 1
    python bench/replay_identity.py compare old.json new.json

The dump: every Alert (all columns, evidence included), Block, UserBaseline, the
events' suspect flags, the minute/hourly rollups and window totals, and the
`export_alerts` output, after replaying the synthetic labelled trace
(tests/monitoring/fixtures/trace.py) through `import_networks` and
`import_auth_events --as-of-original-time` (the command's own batch defaults
unless --batch-seconds is given). Ids are normalised (sequences are restarted, and
alert/block ids inside texts are mapped to their rank), wall-clock columns are left out.
"""

import argparse
import hashlib
import io
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path


def _setup(code: Path):
    sys.path.insert(0, str(code))
    os.chdir(code)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mailadmin.settings")
    import django

    django.setup()


WALL_CLOCK = {"received", "created_at", "updated", "updated_at"}


def _rows(model, order):
    fields = [f.attname for f in model._meta.concrete_fields if f.attname not in WALL_CLOCK]
    return [list(r) for r in model.objects.order_by(*order).values_list(*fields)], fields


def dump(out, mailboxes, days, seed, batch_seconds, code):
    _setup(code)
    from django.core.management import call_command
    from django.db import connection

    from mailadmin.monitoring import blocks, detectors, enrich
    from mailadmin.monitoring.models import (
        Alert,
        AuthEvent,
        Block,
        HourlyRollup,
        Rollup,
        UserBaseline,
        WindowState,
        WindowTotal,
    )
    from tests.monitoring.fixtures.trace import build_trace, write_files

    tables = [
        m._meta.db_table
        for m in (Block, Alert, AuthEvent, Rollup, HourlyRollup, UserBaseline, WindowState, WindowTotal)
    ]
    with connection.cursor() as cursor:
        cursor.execute(
            f"TRUNCATE {', '.join(tables)}, monitoring_namednetwork, monitoring_allowednetwork "  # noqa: S608
            "RESTART IDENTITY CASCADE"
        )
    blocks._snapshot.invalidate_local()
    blocks._recent.clear()
    enrich._named.invalidate()
    detectors._last_surge_minute["value"] = None
    detectors.settings_changed()
    trace = build_trace(mailboxes=mailboxes, days=days, seed=seed)
    args = ["--as-of-original-time", "--quiet"]
    if batch_seconds:
        args.append(f"--batch-seconds={batch_seconds}")
    with tempfile.TemporaryDirectory() as tmp:
        events_path, nets_path = Path(tmp) / "events.jsonl", Path(tmp) / "networks.csv"
        write_files(trace, events_path, nets_path)
        call_command("import_networks", str(nets_path), stdout=io.StringIO())
        statements = [0]

        def count(execute, sql, params, many, context):
            statements[0] += 1
            return execute(sql, params, many, context)

        started, cpu = time.monotonic(), time.process_time()
        with connection.execute_wrapper(count):
            call_command("import_auth_events", str(events_path), *args, stdout=io.StringIO(), stderr=io.StringIO())
        elapsed, cpu = time.monotonic() - started, time.process_time() - cpu
        export = io.StringIO()
        call_command("export_alerts", stdout=export)

    alerts, alert_fields = _rows(Alert, ["pk"])
    blocks_, block_fields = _rows(Block, ["pk"])
    alert_rank = {row[0]: i for i, row in enumerate(alerts)}
    block_rank = {row[0]: i for i, row in enumerate(blocks_)}

    def norm_text(value):
        if isinstance(value, str):
            return re.sub(r"alert (\d+)", lambda m: f"alert #{alert_rank.get(int(m.group(1)), 'missing')}", value)
        return value

    def norm(rows, fields, ranks):
        out = []
        for row in rows:
            d = dict(zip(fields, row, strict=True))
            d["id"] = ranks[d["id"]]
            if "alert_id" in d and d["alert_id"] is not None:
                d["alert_id"] = alert_rank[d["alert_id"]]
            out.append({k: norm_text(v) for k, v in d.items()})
        return out

    baselines, baseline_fields = _rows(UserBaseline, ["username"])
    baselines = [{k: v for k, v in zip(baseline_fields, r, strict=True) if k != "id"} for r in baselines]
    suspect = hashlib.sha256(
        repr(list(AuthEvent.objects.order_by("event_id").values_list("event_id", "suspect"))).encode()
    ).hexdigest()

    def table_hash(model, order):
        rows, fields = _rows(model, order)
        drop = fields.index("id") if "id" in fields else None
        rows = [[v for i, v in enumerate(r) if i != drop] for r in rows]
        return hashlib.sha256(repr(rows).encode()).hexdigest()

    export_lines = []
    for line in export.getvalue().splitlines():
        if line.strip():
            item = json.loads(line)
            item["id"] = alert_rank[item["id"]]
            export_lines.append({k: norm_text(v) for k, v in item.items()})
    result = {
        "events": len(trace.events),
        "replay_seconds": round(elapsed, 1),
        "replay_rate": round(len(trace.events) / elapsed),
        "replay_cpu_seconds": round(cpu, 1),
        "statements": statements[0],
        "alerts": norm(alerts, alert_fields, alert_rank),
        "blocks": norm(blocks_, block_fields, block_rank),
        "baselines": baselines,
        "suspect_flags": suspect,
        "rollups": table_hash(Rollup, ["minute", "dimension", "key", "result"]),
        "hourly_rollups": table_hash(HourlyRollup, ["hour", "dimension", "key", "result"]),
        "window_totals": table_hash(WindowTotal, ["preset", "scope", "dimension", "key", "sub"]),
        "export_alerts": export_lines,
    }
    Path(out).write_text(json.dumps(result, indent=1, default=str, sort_keys=True))
    print(
        f"{out}: {len(trace.events)} events in {elapsed:.1f} s ({result['replay_rate']} events/s), "
        f"Python CPU {cpu:.1f} s, {statements[0]} SQL statements; "
        f"{len(alerts)} alerts, {len(blocks_)} blocks, {len(baselines)} baselines"
    )


def compare(a, b) -> int:
    left, right = json.loads(Path(a).read_text()), json.loads(Path(b).read_text())
    differ = 0
    for key in sorted(set(left) | set(right)):
        if key in ("replay_seconds", "replay_rate", "replay_cpu_seconds", "statements"):
            continue
        if left.get(key) == right.get(key):
            continue
        differ += 1
        lv, rv = left.get(key), right.get(key)
        print(f"DIFFERENT: {key}")
        if isinstance(lv, list) and isinstance(rv, list):
            print(f"  {len(lv)} vs {len(rv)} items")
            for i, (x, y) in enumerate(zip(lv, rv, strict=False)):
                if x != y:
                    print(f"  first difference at item {i}:\n    {x}\n    {y}")
                    break
    print(
        f"rates: {left.get('replay_rate')} → {right.get('replay_rate')} events/s "
        f"({left.get('replay_seconds')} s → {right.get('replay_seconds')} s; Python CPU "
        f"{left.get('replay_cpu_seconds')} → {right.get('replay_cpu_seconds')} s; statements "
        f"{left.get('statements')} → {right.get('statements')})"
    )
    print("IDENTICAL" if not differ else f"{differ} part(s) differ")
    return 1 if differ else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump")
    d.add_argument("out")
    d.add_argument("--code", default=str(Path(__file__).resolve().parent.parent), help="the checkout to run")
    d.add_argument("--mailboxes", type=int, default=100)
    d.add_argument("--days", type=int, default=3)
    d.add_argument("--seed", type=int, default=1)
    d.add_argument("--batch-seconds", type=float, default=None, help="default: the command's own")
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    args = parser.parse_args()
    if args.cmd == "dump":
        out = str(Path(args.out).resolve())
        dump(out, args.mailboxes, args.days, args.seed, args.batch_seconds, Path(args.code).resolve())
    else:
        sys.exit(compare(args.a, args.b))
