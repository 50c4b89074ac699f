"""Auth events per the DESIGN contract, for tests and the fixture generators."""

import datetime as dt
import uuid

BASE = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)


def event(
    client_ip="198.51.100.7",
    username="ann@a.example",
    result="bad_credentials",
    ts=None,
    pw_fp=1,
    mechanism="PLAIN",
    tls="TLSv1.3",
    **extra,
):
    data = {
        "id": str(uuid.uuid4()),
        "ts": ts if isinstance(ts, str) else (ts or BASE).isoformat(),
        "node": "smtp1",
        "session_id": uuid.uuid4().hex[:16],
        "attempt": 1,
        "client_ip": client_ip,
        "listener": 587,
        "tls": tls,
        "helo": "client.example",
        "mechanism": mechanism,
        "username": username,
        "credential": "password",
        "result": result,
        "pw_fp": pw_fp,
        "latency_ms": 12,
    }
    data.update(extra)
    return data
