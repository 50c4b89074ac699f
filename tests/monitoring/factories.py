"""Auth events per the DESIGN contract, for tests and the fixture generators."""

import datetime as dt
import functools
import random
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


@functools.cache
def _population():
    """5,000 users and the 2,000 addresses they log in from: the same on every call, so
    a feed made of many calls keeps each user at home (no fake impossible travel)."""
    rng = random.Random(0)
    users = [f"user{i}@bench{i % 20}.example" for i in range(5000)]
    ips = [f"81.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}" for _ in range(2000)]
    return users, ips


def traffic(n, start, rng, step=dt.timedelta(milliseconds=2), node="bench"):
    """A realistic mix for load runs: mostly successes of many users from their usual
    addresses, a few percent failures (typos, stale clients), an ongoing brute force."""
    users, ips = _population()
    attacker = "45.1.2.3"
    out = []
    for i in range(n):
        roll = rng.random()
        if roll < 0.03:
            ip, user, result, fp = attacker, rng.choice(users), "bad_credentials", rng.randrange(4096)
        elif roll < 0.08:
            ip, user, result, fp = rng.choice(ips), rng.choice(users), "bad_credentials", rng.randrange(4096)
        else:
            k = rng.randrange(len(users))
            ip, user, result, fp = ips[k % len(ips)], users[k], "success", k % 4096
        out.append(
            event(
                client_ip=ip,
                username=user,
                result=result,
                ts=start + i * step,
                pw_fp=fp,
                node=node,
                helo="bench",
                latency_ms=5,
            )
        )
    return out
