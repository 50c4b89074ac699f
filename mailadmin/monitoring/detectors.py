"""Detectors: classify failures, learn users' normal, find attacks, raise alerts, block.

All times are the events' own times (T = the newest event of a batch), never
now(), so replaying a two-week trace gives the alerts it would have given live.

The pipeline per ingested batch (see ingest.ingest_events):
1. classify(rows) — before insert: which failures are *suspect*. A failure from
   a network where the user has logged in before (their /24 or /64, or an office
   or trusted named network), or an old password retried from the user's usual
   AS, is a stale client or a typo, not an attack: detectors never count it.
2. learn(rows) — successes, in time order, against the user's baseline as it was
   before each one: new country/AS, impossible travel, dormant account; then the
   baseline learns the place.
3. run_for_batch(rows) — windowed counts of suspect failures per IP, prefix,
   AS, user (one grouped query each), thresholds from DetectorSetting, alerts
   deduplicated per (rule, entity), blocks with escalation, success after attack.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections import Counter, defaultdict

from django.db import IntegrityError, transaction
from django.db.models import CharField, Count, JSONField, Max, Min, Q, Sum, Value
from django.db.models.functions import Cast, Concat

from mailadmin.monitoring import geo
from mailadmin.monitoring.blocks import BlockReads, create_block, is_allowlisted
from mailadmin.monitoring.models import (
    FAILURE_RESULTS,
    SEVERITY_RANK,
    Alert,
    AuthEvent,
    Block,
    DetectorSetting,
    NetworkKind,
    Result,
    Rollup,
    UserBaseline,
    domain_of,
)

log = logging.getLogger(__name__)

DEFAULTS = {
    "ip_bruteforce": {"severity": "high", "failures": 10, "window_minutes": 10, "min_distinct_credentials": 4},
    "account_bruteforce": {"severity": "high", "distinct_fingerprints": 10, "window_minutes": 60},
    "spray": {"severity": "high", "users": 5, "max_tries_per_user": 2, "window_minutes": 60},
    "stuffing": {"severity": "high", "users": 10, "unknown_ratio": 0.5, "window_minutes": 60},
    "slow_distributed": {"severity": "high", "ips": 5, "distinct_fingerprints": 10, "window_minutes": 1440},
    "low_and_slow": {"severity": "medium", "failures": 20, "window_minutes": 1440, "min_distinct_credentials": 4},
    "success_after_attack": {"severity": "critical", "window_minutes": 60},
    "new_country": {"severity": "medium", "learning_days": 5, "min_successes": 10, "window_minutes": 1440},
    "new_asn": {"severity": "low", "learning_days": 5, "min_successes": 10, "window_minutes": 1440},
    "impossible_travel": {"severity": "high", "speed_kmh": 1000, "min_distance_km": 500, "window_minutes": 1440},
    "cleartext": {"severity": "low", "window_minutes": 1440},
    "surge": {"severity": "high", "factor": 5, "min_failures": 100, "window_minutes": 10, "baseline_days": 7},
    "dormant": {"severity": "medium", "days": 90, "window_minutes": 1440},
    "stale_client": {"severity": "low", "window_minutes": 1440},
}

RULE_TITLES = {
    "ip_bruteforce": "IP brute force",
    "account_bruteforce": "Account brute force",
    "spray": "Password spraying",
    "stuffing": "Credential stuffing",
    "slow_distributed": "Slow distributed attack on an account",
    "low_and_slow": "Low-and-slow attack source",
    "success_after_attack": "Successful login after an attack",
    "new_country": "Login from a new country",
    "new_asn": "Login from a new network (AS)",
    "impossible_travel": "Impossible travel",
    "cleartext": "Cleartext AUTH attempts",
    "surge": "Server-wide surge of failed logins",
    "dormant": "Dormant account used",
    "stale_client": "Stale client retrying an old password",
}

# Rules whose alert marks its entity as "under attack" for success_after_attack.
ATTACK_RULES = ("ip_bruteforce", "account_bruteforce", "spray", "stuffing", "slow_distributed", "low_and_slow")
# Named-network kinds that never count as an attack source and are never blocked.
TRUSTED_KINDS = (NetworkKind.OFFICE, NetworkKind.TRUSTED)
# Kinds whose location says nothing about where the person is.
UNLOCATED_KINDS = (NetworkKind.VPN, NetworkKind.HOSTING, NetworkKind.MOBILE)
MAX_EVIDENCE = 50
SAMPLES_PER_UPDATE = 10
BASELINE_PREFIXES = 100
BASELINE_FPS = 5
# A source where this many different users logged in during the last week is shared by
# real people (NAT, carrier, relay): alert, but never block it.
SHARED_SOURCE_USERS = 3
STALE_MEMORY = dt.timedelta(days=7)
# A source that sent fewer different passwords than this for a user and repeats one is a stuck
# client (a relay or phone with a wrong password configured), not a guesser.
STUCK_CLIENT_PASSWORDS = 3

_settings_cache: dict = {"at": 0.0, "value": None}


def rule_settings() -> dict:
    """{rule: params} with the dashboard's overrides; rules switched off are absent."""
    now = time.monotonic()
    if _settings_cache["value"] is not None and now - _settings_cache["at"] < 10:
        return _settings_cache["value"]
    merged = {rule: dict(params) for rule, params in DEFAULTS.items()}
    for setting in DetectorSetting.objects.all():
        if setting.rule not in merged:
            continue
        if not setting.enabled:
            merged.pop(setting.rule)
            continue
        merged[setting.rule].update({k: v for k, v in (setting.params or {}).items() if k in DEFAULTS[setting.rule]})
    _settings_cache.update(at=now, value=merged)
    return merged


def settings_changed():
    _settings_cache["value"] = None


def _minutes(params) -> dt.timedelta:
    return dt.timedelta(minutes=float(params["window_minutes"]))


def _is_failure(row) -> bool:
    return row["result"] in FAILURE_RESULTS


# ---------------------------------------------------------------- 1+2. classify and learn

BASELINE_FIELDS = [
    "first_success",
    "last_success",
    "success_count",
    "countries",
    "asns",
    "prefixes",
    "last_lat",
    "last_lon",
    "last_place_at",
    "last_place_ip",
    "success_fps",
]


def _place_counts(row) -> bool:
    return row["network_kind"] not in UNLOCATED_KINDS


def classify_and_learn(rows: list[dict]) -> None:
    """One pass in time order over new rows.

    Failures get row["suspect"] / row["stale"] judged against the user's baseline
    as it is at that moment; successes get row["findings"] (new country, travel,
    dormant) judged against the baseline before them, then teach it.
    """
    users = sorted({r["username"] for r in rows if r["username"]})
    if not rows:
        return
    params = rule_settings()
    claimed = _claim_new_baselines(rows)
    baselines = {b.username: b for b in _locked_baselines(users)}
    for user in claimed:  # placeholders only: judged as "no baseline yet", exactly as before
        del baselines[user]
    failing_known = {u for u in {r["username"] for r in rows if _is_failure(r)} if u in baselines}
    since = rows[0]["ts"] - STALE_MEMORY
    # (ip, user, fingerprint) that already failed: the same wrong password sent again from the
    # same place is a misconfigured client (a relay after a migration), never a new guess.
    failing = [r for r in rows if _is_failure(r) and r["pw_fp"] is not None]
    failing_users, failing_ips = {r["username"] for r in failing}, {r["client_ip"] for r in failing}
    # One read for both: the known users' (user, fingerprint) pairs and the failing sources' triples.
    past = set()
    if failing_known or failing:
        past = _past_failures(("client_ip", "username", "pw_fp"), failing_known | failing_users, since)
    recent_pairs = {(user, fp) for _ip, user, fp in past if user in failing_known}
    seen_triples = {(ip, user, fp) for ip, user, fp in past if user in failing_users and ip in failing_ips}
    guesses = Counter((ip, user) for ip, user, _fp in seen_triples)
    # Addresses flagged by an attack rule in the last hour: a login from one of them is the
    # attacker's (success after attack), not a place the user is.
    success_ips = {r["client_ip"] for r in rows if r["result"] == Result.SUCCESS and r["username"]}
    attacking = set()
    if success_ips:
        attacking = {
            key[3:]
            for key in Alert.objects.filter(
                rule__in=ATTACK_RULES,
                entity_key__in=[f"ip:{ip}" for ip in success_ips],
                last_seen__gte=rows[0]["ts"] - dt.timedelta(hours=1),
            )
            .exclude(status=Alert.Status.SAFE)
            .values_list("entity_key", flat=True)
        }  # distinct passwords per source and user
    created, changed = {}, set()
    allow_cache = {}
    for row in rows:
        row["suspect"] = False
        row["stale"] = False
        ip = row["client_ip"]
        if ip not in allow_cache:
            allow_cache[ip] = is_allowlisted(ip)
        user = row["username"]
        base = baselines.get(user)
        if row["result"] == Result.SUCCESS and user:
            if base is None:
                base = baselines[user] = created[user] = _Baseline(username=user, domain_name=domain_of(user))
            row["findings"] = _success_findings(row, base, params, allow_cache[ip])
            row["known_source"] = row["prefix"] in (base.prefixes or []) or row["network_kind"] in TRUSTED_KINDS
            row["known_asn"] = bool(row["asn_key"]) and row["asn_key"] in (base.asns or [])
            # An impossible login, or one from an attacking address, is not where the user is:
            # learning it would make the real user's next login look impossible in turn.
            impossible = any(f[0] == "impossible_travel" for f in row["findings"])
            _learn_success(base, row, place=not impossible and ip not in attacking)
            changed.add(user)
            continue
        if not _is_failure(row):
            continue
        pair = (user, row["pw_fp"])
        retried = row["pw_fp"] is not None and (
            pair in recent_pairs or (base is not None and row["pw_fp"] in (base.success_fps or []))
        )
        if allow_cache[ip] or row["network_kind"] in TRUSTED_KINDS:
            row["stale"] = retried
        elif base is not None and row["prefix"] in (base.prefixes or []):
            row["stale"] = retried  # the user's own network: a typo or a stale client
        elif base is not None and retried and (row["asn_key"] in (base.asns or []) or row["pw_fp"] in base.success_fps):
            row["stale"] = True  # an old password retried from the user's usual AS
        elif (ip, user, row["pw_fp"]) in seen_triples and guesses[(ip, user)] < STUCK_CLIENT_PASSWORDS:
            row["stale"] = True  # the same wrong password again from the same address: a stuck client
        else:
            row["suspect"] = True  # (a guesser's repeat is a collision of the 12-bit fingerprint)
        if row["pw_fp"] is not None:
            recent_pairs.add(pair)
            if (ip, user, row["pw_fp"]) not in seen_triples:
                seen_triples.add((ip, user, row["pw_fp"]))
                guesses[(ip, user)] += 1
    _save_baselines([baselines[u] for u in sorted(changed)])


def _past_failures(columns: tuple, users, since) -> set[tuple]:
    """Distinct `columns` of stored failures with a fingerprint since `since`, of these users.

    On PostgreSQL the names go as an array parameter (server-side binding): the ORM's __in
    lookup quoted every one of them into the SQL text in Python, every batch.
    """
    from django.db import connection

    if connection.vendor != "postgresql":
        return set(
            AuthEvent.objects.filter(username__in=users, ts__gte=since, result__in=FAILURE_RESULTS, pw_fp__isnull=False)
            .values_list(*columns)
            .distinct()
        )
    from mailadmin.monitoring.ingest import bound_cursor

    table = connection.ops.quote_name(AuthEvent._meta.db_table)
    params = [list(users), since, sorted(str(r) for r in FAILURE_RESULTS)]
    where = "username = ANY(%b::text[]) AND ts >= %b AND result = ANY(%b::text[]) AND pw_fp IS NOT NULL"
    with bound_cursor() as cursor:
        # Identifiers come from model metadata and this function's callers; every value is a parameter.
        cursor.execute(f"SELECT DISTINCT {', '.join(columns)} FROM {table} WHERE {where}", params)  # noqa: S608
        return set(cursor.fetchall())


class _Baseline:
    """A UserBaseline's learned columns as classify_and_learn reads and writes them: a plain
    object, not a model instance (building thousands of those per batch through RawQuerySet,
    field converters included, cost more than the classification itself)."""

    __slots__ = ("username", "domain_name", *BASELINE_FIELDS)
    _DEFAULTS = None

    def __init__(self, **values):
        if _Baseline._DEFAULTS is None:
            _Baseline._DEFAULTS = {
                f.attname: f.get_default() for f in UserBaseline._meta.concrete_fields if f.attname in self.__slots__
            }
        for name, default in _Baseline._DEFAULTS.items():
            setattr(self, name, values[name] if name in values else (default() if callable(default) else default))


def _locked_baselines(users: list[str]):
    """The users' baselines, locked in username order (SELECT … FOR UPDATE).

    On PostgreSQL the thousands of usernames go as one array parameter (the ORM's __in
    lookup prepared every one of them in Python, for every batch), and the rows come back
    as plain _Baseline objects.
    """
    from django.db import connection

    if connection.vendor != "postgresql":
        return UserBaseline.objects.select_for_update().filter(username__in=users).order_by("username")
    from mailadmin.monitoring.ingest import bound_cursor

    names = list(_Baseline.__slots__)
    json_columns = [i for i, n in enumerate(names) if isinstance(UserBaseline._meta.get_field(n), JSONField)]
    table = connection.ops.quote_name(UserBaseline._meta.db_table)
    with bound_cursor() as cursor:
        # The table and column names come from model metadata; the usernames are one parameter.
        cursor.execute(
            f"SELECT {', '.join(names)} FROM {table} WHERE username = ANY(%b::text[]) "  # noqa: S608
            "ORDER BY username FOR UPDATE",
            [users],
        )
        found = []
        for row in cursor.fetchall():
            row = list(row)
            for i in json_columns:  # what JSONField.from_db_value does with the text psycopg returns
                if isinstance(row[i], str):
                    row[i] = json.loads(row[i])
            found.append(_Baseline(**dict(zip(names, row, strict=True))))
        return found


def _claim_new_baselines(rows) -> set[str]:
    """Lock order for concurrent workers (no deadlocks): insert an empty row for every user
    with a success in the batch that has no baseline yet, in sorted order, BEFORE locking
    the existing rows. Otherwise a baseline another worker created and committed after our
    SELECT … FOR UPDATE was locked only at _save_baselines, out of order, and two workers
    could wait for each other. Returns the users whose placeholder this transaction
    inserted; _save_baselines overwrites every column of them.
    """
    from django.db import connection

    users = sorted({r["username"] for r in rows if r["result"] == Result.SUCCESS and r["username"]})
    if not users or connection.vendor != "postgresql":
        return set()
    from mailadmin.monitoring.ingest import bound_cursor

    table = connection.ops.quote_name(UserBaseline._meta.db_table)
    with bound_cursor() as cursor:
        # Identifiers come from model metadata; every value is a parameter.
        cursor.execute(
            f"INSERT INTO {table} (username, domain_name, success_count, countries, asns, prefixes, "  # noqa: S608
            "last_place_ip, success_fps) SELECT u, '', 0, '[]'::jsonb, '[]'::jsonb, '[]'::jsonb, '', '[]'::jsonb "
            # NOT EXISTS first: most users have a baseline, and an index probe costs less than
            # the conflict check of an attempted insert (same rows claimed either way).
            f"FROM unnest(%b::text[]) AS u WHERE NOT EXISTS (SELECT 1 FROM {table} b WHERE b.username = u) "
            "ON CONFLICT (username) DO NOTHING RETURNING username",
            [users],
        )
        return {username for (username,) in cursor.fetchall()}


def _unnest_arrays(fields, objs) -> tuple[list[str], list[list]]:
    """(casts, params) for unnest() of these fields' values of objs on PostgreSQL.

    One binary array parameter per column (server-side binding): cheap to send and to
    parse. JSON columns go as their text (one C json.dumps each) and are cast by the server.
    """
    from django.db import connection

    casts, params = [], []
    for f in fields:
        values = [getattr(o, f.attname) for o in objs]
        if isinstance(f, JSONField):
            casts.append("%b::text[]::jsonb[]")
            values = [None if v is None else json.dumps(v) for v in values]
        else:
            casts.append(f"%b::{f.db_type(connection)}[]")
        params.append(values)
    return casts, params


def _save_baselines(objs):
    """One INSERT … ON CONFLICT DO UPDATE for every baseline touched by the batch."""
    if not objs:
        return
    from django.db import connection

    model = UserBaseline
    fields = [model._meta.get_field(n) for n in ["username", "domain_name", *BASELINE_FIELDS]]
    table = connection.ops.quote_name(model._meta.db_table)
    cols = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    updates = ", ".join(
        f"{connection.ops.quote_name(f.column)} = EXCLUDED.{connection.ops.quote_name(f.column)}" for f in fields[1:]
    )
    conflict = f"ON CONFLICT (username) DO UPDATE SET {updates}"
    if connection.vendor == "postgresql":
        from mailadmin.monitoring.ingest import bound_cursor

        casts, params = _unnest_arrays(fields, objs)
        casts = ", ".join(casts)
        with bound_cursor() as cursor:
            # Identifiers and types come from model metadata; every value is a parameter.
            cursor.execute(f"INSERT INTO {table} ({cols}) SELECT * FROM unnest({casts}) {conflict}", params)  # noqa: S608
        return
    one = "(" + ", ".join(["%s"] * len(fields)) + ")"
    with connection.cursor() as cursor:
        for start in range(0, len(objs), 500):
            chunk = objs[start : start + 500]
            params = [f.get_db_prep_save(getattr(o, f.attname), connection) for o in chunk for f in fields]
            values = ", ".join([one] * len(chunk))
            # Identifiers come from model metadata; every value is a parameter.
            sql = f"INSERT INTO {table} ({cols}) VALUES {values} {conflict}"  # noqa: S608
            cursor.execute(sql, params)


def _success_findings(row, base, params, allowlisted) -> list[tuple]:
    """(rule, detail) pairs for one success judged against the baseline before it."""
    findings = []
    ts = row["ts"]
    if allowlisted or row["network_kind"] in TRUSTED_KINDS:
        return findings
    locatable = _place_counts(row)
    for rule, attr, value in (
        ("new_country", "countries", row["country"]),
        ("new_asn", "asns", row["asn_key"]),
    ):
        p = params.get(rule)
        if not p or not value or not locatable:
            continue
        learned = (
            base.first_success is not None
            and base.first_success <= ts - dt.timedelta(days=float(p["learning_days"]))
            and base.success_count >= int(p["min_successes"])
        )
        if learned and value not in (getattr(base, attr) or []):
            findings.append((rule, {"value": value}))
    p = params.get("impossible_travel")
    here = geo.locate(row["latitude"], row["longitude"], row["country"]) if locatable else None
    if p and here and base.last_place_at is not None and base.last_lat is not None:
        there = (base.last_lat, base.last_lon, 50.0 if base.last_place_ip.startswith("@") else _radius(base))
        distance = geo.min_distance_km(here, there)
        hours = max((ts - base.last_place_at).total_seconds() / 3600, 1 / 60)
        if distance >= float(p["min_distance_km"]) and distance / hours >= float(p["speed_kmh"]):
            findings.append(
                (
                    "impossible_travel",
                    {
                        "from_ip": base.last_place_ip.lstrip("@"),
                        "distance_km": round(distance),
                        "hours": round(hours, 2),
                        "speed_kmh": round(distance / hours),
                    },
                )
            )
    p = params.get("dormant")
    if p and base.last_success is not None and base.last_success <= ts - dt.timedelta(days=float(p["days"])):
        findings.append(("dormant", {"idle_days": (ts - base.last_success).days}))
    return findings


def _radius(base) -> float:
    # last_place_ip is "@ip" when the place came from exact coordinates, plain ip for a country centre.
    centre = geo.COUNTRY_CENTRES.get(base.countries[-1]) if base.countries else None
    return centre[2] if centre else 50.0


def _learn_success(base, row, place=True) -> None:
    ts = row["ts"]
    base.first_success = min(base.first_success, ts) if base.first_success else ts
    base.last_success = max(base.last_success, ts) if base.last_success else ts
    base.success_count = (base.success_count or 0) + 1
    if not place:
        return
    prefixes = [p for p in (base.prefixes or []) if p != row["prefix"]] + [row["prefix"]]
    base.prefixes = prefixes[-BASELINE_PREFIXES:]
    if row["pw_fp"] is not None:
        fps = [f for f in (base.success_fps or []) if f != row["pw_fp"]] + [row["pw_fp"]]
        base.success_fps = fps[-BASELINE_FPS:]
    if _place_counts(row):
        if row["country"] and row["country"] not in (base.countries or []):
            base.countries = [*(base.countries or []), row["country"]]
        if row["asn_key"] and row["asn_key"] not in (base.asns or []):
            base.asns = [*(base.asns or []), row["asn_key"]][-50:]
        here = geo.locate(row["latitude"], row["longitude"], row["country"])
        if here:
            exact = row["latitude"] is not None
            base.last_lat, base.last_lon = here[0], here[1]
            base.last_place_at = ts
            base.last_place_ip = ("@" if exact else "") + row["client_ip"]
            if not exact and row["country"] in (base.countries or []):
                # keep the radius lookup (by last country) pointing at this country
                base.countries = [c for c in base.countries if c != row["country"]] + [row["country"]]


# ---------------------------------------------------------------- 3. detect


def _sample(row) -> dict:
    """One evidence line: never a credential or fingerprint."""
    return {
        "ts": row["ts"].isoformat(),
        "ip": row["client_ip"],
        "country": row.get("country", ""),
        "asn": row.get("asn_key", "") or row.get("as_name", ""),
        "username": row.get("username", ""),
        "mechanism": row.get("mechanism", ""),
        "tls": row.get("tls", ""),
        "helo": row.get("helo", ""),
        "result": row["result"],
    }


class Detection:
    """Collects what one batch found; alerts are written at the end."""

    def __init__(self, rows, *, notify):
        self.rows = rows
        self.notify = notify
        self.T = rows[-1]["ts"]
        self.params = rule_settings()
        self.raised = 0
        self.resolved = False
        self.last_fresh = False
        # (rule, entity_key) → its live alert as this slice left it (None: none live), locked.
        self.live: dict = {}
        # pk → alert whose UPDATED_ON_REPEAT and action columns are still to be written (flush).
        self.dirty: dict = {}
        self.raised_alerts: list = []  # to notify after commit, in one go (their ids by then)
        self._notify_hooked = False
        # (rule, entity_key) → [new alert not inserted yet, [(entity, its findings' arguments)], times
        # counted as raised]: written by insert_new().
        self.pending: dict = {}
        # (column, key) → _success_logins of the key from the slice's start to T: one read per
        # source for the shared-source and "used before" checks of the whole slice.
        self._logins: dict = {}

    def _notify(self, alert):
        if not self.notify:
            return
        if not self._notify_hooked:
            from mailadmin.monitoring import notify as notify_mod

            transaction.on_commit(lambda raised=self.raised_alerts: notify_mod.alerts_raised([a.pk for a in raised]))
            self._notify_hooked = True
        self.raised_alerts.append(alert)

    def _resolve_first(self):
        if not self.resolved:
            auto_resolve(self.T)  # first, so a new wave after a quiet spell opens a new alert
            self.resolved = True

    def prefetch(self, rule, entity_keys):
        """Read and lock the live alerts of these entities at once (one query instead of one per
        alert); the updates of the slice are then made in memory and written by flush()."""
        if rule not in self.params:
            return
        keys = sorted({k for k in entity_keys if (rule, k) not in self.live})
        if not keys:
            return
        # Not auto_resolve() here (it runs at the slice's first alert, if any, as before): the
        # alerts it would resolve are left out, so alert() opens their successors as it did.
        found = _live_alerts_for_update(rule, keys, None if self.resolved else self.T)
        for key in keys:
            self.live[(rule, key)] = found.get(key)

    def logins(self, column, keys) -> dict:
        """_success_logins of these keys from the slice's earliest to its latest event (every T a
        check of the slice asks about), `recent` since T - 7 days; each key read once per slice
        (detection writes no events). Keyed as _shared_sources looks them up."""
        norm = _address_text if column == "client_ip" else str
        missing = sorted({norm(k) for k in keys} - {k for c, k in self._logins if c == column})
        if missing:
            times = [r["ts"] for r in self.rows]
            found = _success_logins(column, missing, min(times), max(*times, self.T), self.T - SHARED_SOURCE_MEMORY)
            for key in missing:
                self._logins[(column, key)] = found.get(key, [])
        return {norm(k): self._logins[(column, norm(k))] for k in keys}

    def logged_in_before(self, column, key, before) -> bool:
        """A success from this source in (T - 7 days, before), for any `before` up to T."""
        [(_key, entries)] = self.logins(column, [key]).items()
        return any(recent is not None and recent < before for *_entry, recent in entries)

    def set_action(self, alert, action, expires_at):
        """The alert's action text, written with the slice's other alert updates."""
        alert.action, alert.action_expires_at = action, expires_at
        self.dirty[alert.pk] = alert

    def insert_new(self):
        """INSERT the alerts alert(…, batched=True) opened, in one statement: they get their ids.

        One that another worker opened at the same moment (found at the insert, as raise_alert
        finds it) takes that worker's alert instead, with this slice's findings applied to it
        as raise_alert would have; its notices are then one at most."""
        if not self.pending:
            return
        _insert_alerts([alert for alert, _findings, _raised in self.pending.values()])
        for (rule, entity_key), (alert, findings, raised) in self.pending.items():
            if alert.pk is not None:
                continue
            (entity, args), *later = findings
            found, fresh = raise_alert(rule, entity_key, entity, notify=False, **args)
            for entity, args in later:
                fresh = _repeat_alert(found, entity=entity, **args) or fresh
            for f in Alert._meta.concrete_fields:  # the callers hold `alert`: it becomes that one
                setattr(alert, f.attname, getattr(found, f.attname))
            alert._state.adding, alert._state.db = False, found._state.db
            self.dirty[alert.pk] = alert
            self.raised_alerts[:] = [a for a in self.raised_alerts if a is not alert]
            self.raised -= raised
            if fresh:
                self._notify(alert)
                self.raised += 1
        self.pending.clear()

    def flush(self):
        """Write the slice's pending alert updates (before anything reads the alerts again)."""
        self.insert_new()
        if self.dirty:
            _update_alerts(list(self.dirty.values()))
            self.dirty.clear()

    def alert(
        self,
        rule,
        entity_key,
        entity,
        *,
        count,
        first_seen,
        verdict,
        samples,
        domain_name="",
        severity=None,
        batched=False,
    ):
        """Raise or update the alert of (rule, entity). batched: a new one is only made in memory,
        inserted with the slice's others by insert_new() (call it before using its pk)."""
        self._resolve_first()
        p = self.params[rule]
        severity = severity or p["severity"]
        window = int(float(p.get("window_minutes", 60)) * 60)
        args = {
            "severity": severity,
            "ts": self.T,
            "first_seen": first_seen,
            "count": count,
            "window_seconds": window,
            "verdict": verdict,
            "samples": samples,
        }
        alert = self.live.get((rule, entity_key))
        absent = alert is None and (rule, entity_key) in self.live  # prefetched: none live
        if alert is not None:  # read (and locked) earlier in this slice: updated in memory
            fresh = _repeat_alert(alert, entity=entity, **args)
            if alert.pk is None:
                pending = self.pending[(rule, entity_key)]
                pending[1].append((entity, args))
                pending[2] += fresh
            else:
                self.dirty[alert.pk] = alert
        elif absent and batched:
            alert, fresh = _new_alert(rule, entity_key, entity, domain_name=domain_name, **args), True
            self.pending[(rule, entity_key)] = [alert, [(entity, {**args, "domain_name": domain_name})], 1]
        else:
            alert, fresh = raise_alert(
                rule, entity_key, entity, domain_name=domain_name, notify=False, absent=absent, **args
            )
        if fresh:
            self._notify(alert)
        self.live[(rule, entity_key)] = alert  # the row as written: later updates in memory
        self.last_fresh = fresh
        if fresh:
            self.raised += 1
        return alert


def _cred_expr():
    return Concat("username", Value(":"), Cast("pw_fp", CharField()), output_field=CharField())


def _window_q(T, minutes) -> Q:
    return Q(ts__gt=T - dt.timedelta(minutes=float(minutes)))


SLICE = dt.timedelta(seconds=60)


def _slices(rows):
    """Cut a (time-ordered) batch into slices of at most a minute of event time."""
    current = []
    for row in rows:
        if current and row["ts"] - current[0]["ts"] > SLICE:
            yield current
            current = []
        current.append(row)
    if current:
        yield current


def run_for_batch(rows: list[dict], *, notify: bool = True) -> int:
    """Evaluate the rules touched by this batch, minute by minute of event time. Returns alerts raised.

    A replayed hour arrives as one batch, but each minute is judged at its own time,
    exactly as live batches would have been; slices with nothing to judge cost nothing.
    """
    if not rows:
        return 0
    raised = 0
    # Only successes are checked against recent attacks: a batch without any skips the query
    # (most replayed minutes), and the answer is the same one the query gives at batch start.
    attack_recent = any(r["result"] == Result.SUCCESS and r["username"] for r in rows) and (
        Alert.objects.filter(rule__in=ATTACK_RULES, last_seen__gte=rows[0]["ts"] - dt.timedelta(hours=1)).exists()
    )
    for part in _slices(rows):
        with transaction.atomic():  # one commit per minute of events
            raised += _run_slice(part, notify=notify, attack_recent=attack_recent)
            attack_recent = attack_recent or raised > 0
    return raised


def _run_slice(part, *, notify, attack_recent) -> int:
    det = Detection(part, notify=notify)
    suspect = [r for r in part if r.get("suspect")]
    if suspect:
        _source_rules(det, suspect, "client_ip", "ip")
        _source_rules(det, suspect, "prefix", "prefix")
        _asn_stuffing(det, suspect)
        _account_rules(det, suspect)
        attack_recent = attack_recent or det.raised > 0
    _cleartext(det, part)
    _stale(det, part)
    _success_rules(det, part, check_attacks=attack_recent)
    det.flush()
    if any(_is_failure(r) for r in part):
        surge_check(det.T, notify=notify)
    return det.raised


def _source_rules(det: Detection, suspect, column, kind):
    """IP brute force, spray, stuffing, low-and-slow for each IP (or prefix) in the batch."""
    params = det.params
    T = det.T
    keys = sorted({r[column] for r in suspect})
    by_key = defaultdict(list)
    for r in suspect:
        by_key[r[column]].append(r)
    windows = {}
    for rule in ("ip_bruteforce", "spray", "stuffing", "low_and_slow"):
        if rule in params and not (kind == "prefix" and rule in ("ip_bruteforce", "stuffing")):
            windows[rule] = float(params[rule]["window_minutes"])
    if not windows:
        return
    stats = _source_stats(column, keys, windows, T)
    fired = []
    for st in stats:
        key = st[column]
        batch_rows = by_key.get(key, [])
        sample_row = batch_rows[-1] if batch_rows else None
        if sample_row is None:
            continue

        def get(rule, what, st=st):
            return st.get(f"{rule}__{what}") or 0

        found = []
        p = params.get("ip_bruteforce")
        if (
            "ip_bruteforce" in windows
            and get("ip_bruteforce", "n") >= p["failures"]
            and get("ip_bruteforce", "creds") >= p["min_distinct_credentials"]
        ):
            found.append(("ip_bruteforce", get("ip_bruteforce", "n"), get("ip_bruteforce", "first")))
        p = params.get("spray")
        if "spray" in windows:
            users = get("spray", "users")
            if users >= p["users"] and get("spray", "n") <= p["max_tries_per_user"] * users:
                found.append(("spray", get("spray", "n"), get("spray", "first")))
        p = params.get("stuffing")
        if "stuffing" in windows:
            users = get("stuffing", "users")
            if users >= p["users"] and get("stuffing", "unknown") >= float(p["unknown_ratio"]) * users:
                found.append(("stuffing", get("stuffing", "n"), get("stuffing", "first")))
        p = params.get("low_and_slow")
        if (
            "low_and_slow" in windows
            and get("low_and_slow", "n") >= p["failures"]
            and get("low_and_slow", "creds") >= p["min_distinct_credentials"]
        ):
            found.append(("low_and_slow", get("low_and_slow", "n"), get("low_and_slow", "first")))
        if found:
            fired.append((key, batch_rows, sample_row, found))
    # Asked for all the sources that fired at once (nothing below changes the events it reads).
    items = [(key, T, "") for key, *_rest in fired]
    shared_sources = _shared_sources(column, items, det.logins(column, [key for key, *_rest in fired]))
    for rule in windows:
        det.prefetch(
            rule, [f"{kind}:{key}" for key, _rows, _sample, found in fired if any(f[0] == rule for f in found)]
        )
    responses = []
    for (key, batch_rows, sample_row, found), shared in zip(fired, shared_sources, strict=True):
        entity = {kind: key, "country": sample_row["country"], "asn": sample_row["asn_key"]}
        if kind == "ip":
            entity["prefix"] = sample_row["prefix"]
        shared = shared or _own_hosted_client(column, key, sample_row, T)
        for rule, count, first in found:
            severity = params[rule]["severity"]
            if shared and SEVERITY_RANK[severity] > SEVERITY_RANK["medium"]:
                severity = "medium"  # many real users log in from here: look, but do not shout or block
            verdict = _verdict(rule, kind, key, count, params[rule])
            alert = det.alert(
                rule,
                f"{kind}:{key}",
                entity,
                count=count,
                first_seen=first or T,
                verdict=verdict,
                samples=[_sample(r) for r in batch_rows[-SAMPLES_PER_UPDATE:]],
                severity=severity,
                batched=True,
            )
            if not shared:
                responses.append((alert, rule, key, sample_row))
    det.insert_new()  # the new alerts in one INSERT, before their ids go into the blocks' reasons
    for alert, rule, key, sample_row in responses:
        _respond_block(det, alert, rule, kind, key, sample_row, T)


def _source_queryset(column, keys, windows, T):
    """Per key: each rule's window counts of suspect failures (one grouped query)."""
    longest = max(windows.values())
    ann = {}
    for rule, minutes in windows.items():
        w = _window_q(T, minutes)
        ann[f"{rule}__n"] = Count("id", filter=w)
        ann[f"{rule}__creds"] = Count(_cred_expr(), distinct=True, filter=w)
        ann[f"{rule}__users"] = Count("username", distinct=True, filter=w)
        ann[f"{rule}__unknown"] = Count("username", distinct=True, filter=w & Q(result=Result.UNKNOWN_USER))
        ann[f"{rule}__first"] = Min("ts", filter=w)
    return (
        AuthEvent.objects.filter(
            suspect=True, ts__gt=T - dt.timedelta(minutes=longest), ts__lte=T, **{f"{column}__in": keys}
        )
        .values(column)
        .annotate(**ann)
    )


def _source_params(column, keys, windows, T) -> list:
    """_source_queryset's parameters in the order its SQL takes them."""
    params = []
    for minutes in windows.values():
        cut = T - dt.timedelta(minutes=float(minutes))
        params += [cut, "", ":", "", "", "", cut, cut, cut, Result.UNKNOWN_USER, cut]
    return [*params, *_lookup_values(column, keys), T - dt.timedelta(minutes=max(windows.values())), T]


def _source_stats(column, keys, windows, T):
    return _rows_compiled_once(
        ("source", column, tuple(windows.items()), len(keys)),
        lambda: _source_queryset(column, keys, windows, T),
        _source_params(column, keys, windows, T),
    )


def _lookup_values(column, values) -> list:
    """The database values of an AuthEvent column's __in lookup."""
    from django.db import connection

    field = AuthEvent._meta.get_field(column)
    return [field.get_db_prep_value(field.get_prep_value(v), connection, prepared=True) for v in values]


# shape → Django's SQL of a detector's grouped query, or None when its parameters did not come
# out as the caller lays them out (then the ORM runs it).
_COMPILED: dict = {}
_COMPILED_MAX = 2000


def _rows_compiled_once(shape, queryset_of, params) -> list[dict] | object:
    """The rows of queryset_of() (a .values() queryset), its SQL compiled once per shape.

    The ORM's compile of the detectors' grouped window queries (up to 20 filtered
    aggregates) cost more than running them, for every replayed minute. The SQL kept is
    Django's own, and used only when the parameters the caller laid out for this call
    were equal to Django's at the first compile of the shape; the shape must fix
    everything but the parameter values.
    """
    from django.db import connection

    key = (connection.vendor, *shape)
    if key not in _COMPILED:
        sql, orm_params = queryset_of().query.sql_with_params()
        if len(_COMPILED) >= _COMPILED_MAX:
            _COMPILED.clear()
        _COMPILED[key] = sql if list(orm_params) == params else None
    sql = _COMPILED[key]
    if sql is None:
        return queryset_of()
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        names = [c.name for c in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _shared_source(column, key, T, exclude_user="") -> bool:
    """Several different users logged in successfully from here in the last week (NAT, carrier)."""
    recent = AuthEvent.objects.filter(
        **{column: key}, result=Result.SUCCESS, ts__gt=T - dt.timedelta(days=7), ts__lte=T
    ).values("username")
    if exclude_user:
        recent = recent.exclude(username=exclude_user)
    return recent.distinct().count() >= SHARED_SOURCE_USERS


SHARED_SOURCE_MEMORY = dt.timedelta(days=7)


def _shared_sources(column, items, logins) -> list[bool]:
    """[_shared_source(column, key, T, exclude_user) for (key, T, exclude_user) in items], from one
    grouped read instead of one query per item (a batch of an attack on many addresses asked
    hundreds, each scanning a week of the address's logins). `logins`: _success_logins of every
    key, read with lo at or before every T and hi at or after it, hi - lo under 7 days
    (Detection.logins: a slice spans at most a minute).
    """
    norm = _address_text if column == "client_ip" else str
    answers = []
    for key, T, user in items:
        since = T - SHARED_SOURCE_MEMORY
        users = {
            name
            for name, before, after, _recent in logins.get(norm(key), ())
            if (name != user or not user)
            and ((before is not None and before > since) or (after is not None and after <= T))
        }
        answers.append(len(users) >= SHARED_SOURCE_USERS)
    return answers


def _success_logins(column, keys, lo, hi, recent_after=None) -> dict:
    """{key: [(username, before, after, recent)]} for the successes from these keys in
    (lo - 7 days, hi], per user: the last at or before lo, the first after lo, the first after
    `recent_after` (default hi - 7 days; at least lo - 7 days) — one grouped query, keys as
    Python writes them.

    A user has a login in (T - 7 days, T], for any lo <= T <= hi with hi - lo < 7 days, exactly
    when `before` is later than T - 7 days or `after` is not later than T; `recent` tells whether
    there is one in (recent_after, x) for any x up to hi.
    """
    if recent_after is None:
        recent_after = hi - SHARED_SOURCE_MEMORY
    norm = _address_text if column == "client_ip" else str
    logins = defaultdict(list)
    for found in (
        AuthEvent.objects.filter(
            **{f"{column}__in": keys},
            result=Result.SUCCESS,
            ts__gt=lo - SHARED_SOURCE_MEMORY,
            ts__lte=hi,
        )
        .values(column, "username")
        .annotate(
            before=Max("ts", filter=Q(ts__lte=lo)),
            after=Min("ts", filter=Q(ts__gt=lo)),
            recent=Min("ts", filter=Q(ts__gt=recent_after)),
        )
    ):
        logins[norm(found[column])].append((found["username"], found["before"], found["after"], found["recent"]))
    return logins


def _address_text(value) -> str:
    """An address as Python writes it (the database's text of an inet may be spelt differently)."""
    import ipaddress

    return str(ipaddress.ip_address(str(value)))


def _own_hosted_client(column, key, sample_row, T) -> bool:
    """A declared hosting range failing only for accounts that log in from that range every day:
    the organisation's own relay or CRM with a wrong password after a move, not a spray."""
    name = sample_row["network_name"]
    if sample_row["network_kind"] != NetworkKind.HOSTING or not name:
        return False
    week = Q(ts__gt=T - dt.timedelta(days=7), ts__lte=T)
    users = set(
        AuthEvent.objects.filter(week, **{column: key}, result__in=FAILURE_RESULTS)
        .values_list("username", flat=True)
        .distinct()
    )
    if not users:
        return False
    own = set(
        AuthEvent.objects.filter(week, network_name=name, username__in=users, result=Result.SUCCESS)
        .values_list("username", flat=True)
        .distinct()
    )
    return users <= own


def _respond_block(det, alert, rule, kind, key, sample_row, T):
    if sample_row["network_kind"] in TRUSTED_KINDS:
        return
    if kind == "prefix":
        if sample_row["network_kind"] == NetworkKind.MOBILE:
            return  # a carrier's prefix is shared by many subscribers
        if det.logged_in_before("prefix", key, T + dt.timedelta.resolution):  # in (T - 7 days, T]
            return  # somebody legitimate uses this prefix
    elif _used_before(det, key, alert.first_seen):
        return  # people logged in from here before the failures began: a home or small office, not a bot
    block = create_block(
        Block.Kind.IP if kind == "ip" else Block.Kind.PREFIX,
        key,
        reason=f"{RULE_TITLES[rule]} (alert {alert.pk})",
        rule=rule,
        alert=alert,
        now=T,
    )
    _record_action(det, alert, block)


def _used_before(det, ip, before) -> bool:
    """A success from this address in (T - 7 days, before), T the slice's."""
    if before <= det.T:  # (det.logins read every success up to T)
        return det.logged_in_before("client_ip", ip, before)
    return AuthEvent.objects.filter(
        client_ip=ip, result=Result.SUCCESS, ts__gt=det.T - SHARED_SOURCE_MEMORY, ts__lt=before
    ).exists()


def _record_action(det, alert, block):
    if block is None:
        return
    text = f"blocked {block.get_kind_display().lower()} {block.value}"
    if block.username:
        text += f" for {block.username}"
    text += f" for {_duration(block.expires_at - block.created)}"
    if alert.action == text[:255] and alert.action_expires_at == block.expires_at:
        return  # an ongoing attack re-confirms the same running block every minute: nothing to write
    det.set_action(alert, text[:255], block.expires_at)


def _duration(delta: dt.timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    if minutes < 120:
        return f"{minutes} min"
    if minutes < 48 * 60:
        return f"{minutes // 60} h"
    return f"{minutes // 1440} days"


def _verdict(rule, kind, key, count, p) -> str:
    window = _duration(dt.timedelta(minutes=float(p["window_minutes"])))
    return f"{RULE_TITLES[rule]}: {count} failed logins from {kind} {key} in {window}"[:255]


def _asn_stuffing(det: Detection, suspect):
    p = det.params.get("stuffing")
    if not p:
        return
    T = det.T
    names = sorted({r["as_name"] for r in suspect if r["as_name"]})
    if not names:
        return
    w = _window_q(T, p["window_minutes"])
    stats = (
        AuthEvent.objects.filter(suspect=True, as_name__in=names, ts__lte=T)
        .filter(w)
        .values("as_name")
        .annotate(
            users=Count("username", distinct=True),
            unknown=Count("username", distinct=True, filter=Q(result=Result.UNKNOWN_USER)),
            ips=Count("client_ip", distinct=True),
            n=Count("id"),
            first=Min("ts"),
        )
    )
    for st in stats:
        # Spread over several addresses; a single address is judged by the IP rule.
        if st["ips"] < 2 or st["users"] < p["users"] or st["unknown"] < float(p["unknown_ratio"]) * st["users"]:
            continue
        rows = [r for r in suspect if r["as_name"] == st["as_name"]]
        # Our own users' ISP (many of them log in from it): mistyped usernames from thousands of
        # homes add up there every hour; worth a look, not a page.
        home_isp = _shared_source("as_name", st["as_name"], T)
        det.alert(
            "stuffing",
            f"asn:{rows[-1]['asn_key']}",
            {"asn": rows[-1]["asn_key"], "country": rows[-1]["country"]},
            count=st["n"],
            first_seen=st["first"] or T,
            verdict=f"Credential stuffing: {st['users']} users tried from {st['ips']} addresses in AS {st['as_name']}",
            samples=[_sample(r) for r in rows[-SAMPLES_PER_UPDATE:]],
            severity="medium" if home_isp and SEVERITY_RANK[p["severity"]] > SEVERITY_RANK["medium"] else None,
        )


def _account_rules(det: Detection, suspect):
    params = det.params
    T = det.T
    users = sorted({r["username"] for r in suspect if r["username"]})
    if not users:
        return
    rules = {r: params[r] for r in ("account_bruteforce", "slow_distributed") if r in params}
    if not rules:
        return
    stats = _account_stats(users, rules, T)
    for rule in rules:
        det.prefetch(rule, [f"user:{st['username']}" for st in stats])
    by_user = defaultdict(list)
    for r in suspect:
        by_user[r["username"]].append(r)
    for st in stats:
        user = st["username"]
        found = []
        p = rules.get("account_bruteforce")
        if p and st["account_bruteforce__fps"] >= p["distinct_fingerprints"]:
            found.append("account_bruteforce")
        p = rules.get("slow_distributed")
        if p and st["slow_distributed__ips"] >= p["ips"] and st["slow_distributed__fps"] >= p["distinct_fingerprints"]:
            found.append("slow_distributed")
        for rule in found:
            p = rules[rule]
            verdict = (
                f"{RULE_TITLES[rule]}: {st[f'{rule}__fps']} different passwords tried against {user} "
                f"from {st[f'{rule}__ips']} addresses in {_duration(dt.timedelta(minutes=float(p['window_minutes'])))}"
            )
            alert = det.alert(
                rule,
                f"user:{user}",
                {"username": user},
                count=st[f"{rule}__n"],
                first_seen=st[f"{rule}__first"] or T,
                verdict=verdict[:255],
                samples=[_sample(r) for r in by_user[user][-SAMPLES_PER_UPDATE:]],
                domain_name=domain_of(user),
            )
            _block_pairs(det, alert, rule, user, T, float(p["window_minutes"]), by_user[user], det.last_fresh)


def _account_queryset(users, rules, T):
    """Per user: each rule's window counts of suspect failures (one grouped query)."""
    longest = max(float(p["window_minutes"]) for p in rules.values())
    ann = {}
    for rule, p in rules.items():
        w = _window_q(T, p["window_minutes"])
        ann[f"{rule}__fps"] = Count("pw_fp", distinct=True, filter=w)
        ann[f"{rule}__ips"] = Count("client_ip", distinct=True, filter=w)
        ann[f"{rule}__n"] = Count("id", filter=w)
        ann[f"{rule}__first"] = Min("ts", filter=w)
    return (
        AuthEvent.objects.filter(suspect=True, username__in=users, ts__gt=T - dt.timedelta(minutes=longest), ts__lte=T)
        .values("username")
        .annotate(**ann)
    )


def _account_stats(users, rules, T):
    windows = tuple((rule, float(p["window_minutes"])) for rule, p in rules.items())
    params = []
    for _rule, minutes in windows:
        params += [T - dt.timedelta(minutes=minutes)] * 4
    params += [T - dt.timedelta(minutes=max(m for _r, m in windows)), T, *_lookup_values("username", users)]
    return _rows_compiled_once(("account", windows, len(users)), lambda: _account_queryset(users, rules, T), params)


def _block_pairs(det, alert, rule, user, T, minutes, slice_rows, fresh):
    """Block the attacking sources for this user only (never the account itself).

    A new alert blocks every source seen in the window; later slices block only
    their new sources, skipping pairs already under an active block.
    """
    fields = ("client_ip", "network_name", "network_kind", "as_name")
    if fresh:
        sources = set(
            AuthEvent.objects.filter(suspect=True, username=user, ts__gt=T - dt.timedelta(minutes=minutes), ts__lte=T)
            .exclude(network_kind__in=TRUSTED_KINDS)
            .values_list(*fields)
            .distinct()[:200]
        )
    else:
        sources = {tuple(r[f] for f in fields) for r in slice_rows if r["network_kind"] not in TRUSTED_KINDS}
    if sources:
        # Not the attacker: an address with logins in the last week (a NAT, a relay), or one in a
        # carrier or ISP the user logs in from (her own phone mistyping on a new address).
        used = set(
            AuthEvent.objects.filter(
                client_ip__in={s[0] for s in sources},
                result=Result.SUCCESS,
                ts__gt=T - dt.timedelta(days=7),
                ts__lte=T,
            ).values_list("client_ip", flat=True)
        )
        nets = _user_networks(user, T)
        sources = {s for s in sources if s[0] not in used and not _in_networks(s[1], s[2], s[3], nets)}
    ips = sorted({s[0] for s in sources})
    if not ips:
        return
    active = set(
        Block.objects.active(T)
        .filter(kind=Block.Kind.IP_USER, username=user, value__in=ips)
        .values_list("value", flat=True)
    )
    last = None
    for ip in ips:
        if ip in active:
            continue
        block = create_block(
            Block.Kind.IP_USER,
            ip,
            username=user,
            reason=f"{RULE_TITLES[rule]} on {user} (alert {alert.pk})",
            rule=rule,
            alert=alert,
            now=T,
        )
        last = block or last
    if last is not None:
        total = Block.objects.filter(alert=alert).count()
        det.set_action(
            alert,
            f"blocked {total} source address(es) for {user}, each for {_duration(last.expires_at - last.created)}",
            last.expires_at,
        )


def _cleartext(det: Detection, rows):
    if "cleartext" not in det.params:
        return
    by_ip = defaultdict(list)
    for r in rows:
        if r["result"] == Result.TLS_REQUIRED:
            by_ip[r["client_ip"]].append(r)
    det.prefetch("cleartext", [f"ip:{ip}" for ip in by_ip])
    for ip, items in by_ip.items():
        users = sorted({r["username"] for r in items if r["username"]})
        _increment_alert(det, "cleartext", ip, items, users)


def _increment_alert(det, rule, ip, items, users):
    det.alert(
        rule,
        f"ip:{ip}",
        {"ip": ip, "prefix": items[-1]["prefix"], "country": items[-1]["country"], "asn": items[-1]["asn_key"]},
        count=-len(items),  # negative: add to the running count
        first_seen=items[0]["ts"],
        verdict=f"Cleartext AUTH refused from {ip}" + (f" for {', '.join(users[:3])}" if users else ""),
        samples=[_sample(r) for r in items[-SAMPLES_PER_UPDATE:]],
        domain_name=domain_of(users[0]) if len(users) == 1 else "",
    )


def _stale(det: Detection, rows):
    if "stale_client" not in det.params:
        return
    by_user = defaultdict(list)
    for r in rows:
        if r.get("stale") and r["username"]:
            by_user[r["username"]].append(r)
    det.prefetch("stale_client", [f"user:{user}" for user in by_user])
    for user, items in by_user.items():
        det.alert(
            "stale_client",
            f"user:{user}",
            {"username": user, "ip": items[-1]["client_ip"]},
            count=-len(items),
            first_seen=items[0]["ts"],
            verdict=f"A client of {user} keeps retrying an old password from {items[-1]['client_ip']} (not blocked)",
            samples=[_sample(r) for r in items[-SAMPLES_PER_UPDATE:]],
            domain_name=domain_of(user),
        )


def _success_rules(det: Detection, rows, *, check_attacks=True):
    successes = [r for r in rows if r["result"] == Result.SUCCESS and r["username"]]
    if not successes:
        return
    params = det.params
    for row in successes:
        for rule, detail in row.get("findings", []):
            if rule not in params:
                continue
            _success_finding(det, row, rule, detail)
    p = params.get("success_after_attack")
    if not p or not check_attacks:
        return
    window = dt.timedelta(minutes=float(p["window_minutes"]))
    earliest = successes[0]["ts"] - window
    keys = set()
    for r in successes:
        keys |= {f"ip:{r['client_ip']}", f"prefix:{r['prefix']}", f"user:{r['username']}"}
    flagged = defaultdict(list)
    det.flush()  # the slice's own alert updates first: the query below reads them
    recent = Alert.objects.filter(rule__in=ATTACK_RULES, last_seen__gte=earliest, first_seen__lte=det.T).exclude(
        status=Alert.Status.SAFE
    )
    # Performance only: the keys of the few recent attack alerts first, instead of sending
    # three keys per success of the batch (thousands of parameters) with every query.
    keys &= set(recent.values_list("entity_key", flat=True))
    # Only what the checks and the verdict read (an alert storm had thousands, evidence and all).
    attack_alerts = recent.filter(entity_key__in=keys).only("id", "rule", "entity_key", "first_seen", "last_seen")
    for a in attack_alerts.order_by("-last_seen", "pk") if keys else ():
        flagged[a.entity_key].append(a)  # ordered by pk too: the verdict names the same cause every run
    if not flagged:
        return
    allow_cache = {}
    candidates = []
    for row in successes:
        ip = row["client_ip"]
        if ip not in allow_cache:
            allow_cache[ip] = is_allowlisted(ip) or row["network_kind"] in TRUSTED_KINDS
        if allow_cache[ip]:
            continue
        ts = row["ts"]

        def live(key, ts=ts):
            return [a for a in flagged.get(key, []) if a.first_seen <= ts and a.last_seen >= ts - window]

        by_ip = live(f"ip:{ip}")
        # Another address of a prefix the user has always used (a relay next to an attacker's VM):
        # only the attacking address itself says anything.
        by_source = by_ip + ([] if row.get("known_source") else live(f"prefix:{row['prefix']}"))
        # The user was attacked from elsewhere: only a login from a place the user never used is suspicious.
        by_user = [] if row.get("known_source") or row.get("known_asn") else live(f"user:{row['username']}")
        if by_source or by_user:
            candidates.append((row, by_ip, by_source, by_user))
    # Asked for all candidates at once (nothing below changes the events it reads).
    shared = _shared_sources(
        "client_ip",
        [(r["client_ip"], r["ts"], r["username"]) for r, *_by in candidates],
        det.logins("client_ip", [r["client_ip"] for r, *_by in candidates]),
    )
    det.prefetch("success_after_attack", [f"user:{r['username']}" for r, *_by in candidates])
    # The blocks below, read (and locked) at once: one query instead of one per login.
    reads = BlockReads(
        [
            (Block.Kind.IP, r["client_ip"], "") if by_ip else (Block.Kind.IP_USER, r["client_ip"], r["username"])
            for (r, by_ip, _by_source, _by_user), is_shared in zip(candidates, shared, strict=True)
            if not is_shared
        ],
        min((r["ts"] for r, *_by in candidates), default=det.T),
    )
    responses = []
    for (row, by_ip, by_source, by_user), is_shared in zip(candidates, shared, strict=True):
        ip, ts, user = row["client_ip"], row["ts"], row["username"]
        if is_shared:
            continue  # a NAT or carrier address where other people log in every day: not the attacker's
        if not by_source and _familiar_network(row, user, ts):
            continue  # the user's own carrier or ISP (a new address in it), not a place they never used
        causes = by_source + by_user
        alert = det.alert(
            "success_after_attack",
            f"user:{user}",
            {"username": user, "ip": ip, "prefix": row["prefix"], "country": row["country"], "asn": row["asn_key"]},
            count=1,
            first_seen=ts,
            verdict=(
                f"{user} logged in from {ip} ({row['country'] or '??'}) right after "
                f"{RULE_TITLES[causes[0].rule].lower()} (alert {causes[0].pk}): the password may be compromised"
            )[:255],
            samples=[_sample(row)],
            domain_name=domain_of(user),
            batched=True,
        )
        responses.append((alert, row, by_ip))
    det.insert_new()  # the new alerts in one INSERT, before their ids go into the blocks' reasons
    for alert, row, by_ip in responses:
        ip, ts, user = row["client_ip"], row["ts"], row["username"]
        # The attacking address itself: block it. A login from elsewhere while the account was
        # under attack: block that address for this user only (it may be a shared one).
        block = create_block(
            Block.Kind.IP if by_ip else Block.Kind.IP_USER,
            ip,
            username="" if by_ip else user,
            reason=f"Login after attack on {user} (alert {alert.pk})",
            rule="success_after_attack",
            alert=alert,
            now=ts,
            reads=reads,
        )
        if block is not None:
            det.set_action(
                alert,
                f"blocked IP {ip}{'' if by_ip else ' for ' + user} for "
                f"{_duration(block.expires_at - block.created)}; "
                "consider suspending the mailbox and resetting its password",
                block.expires_at,
            )


def _familiar_network(row, user, ts) -> bool:
    """Has the user logged in before from this address's named network or AS (a carrier, an ISP)?"""
    nets = _user_networks(user, ts)
    return _in_networks(row["network_name"], row["network_kind"], row["as_name"], nets)


USER_NETWORK_MEMORY = dt.timedelta(days=30)


def _user_networks(user, T) -> tuple[set, set]:
    """(named networks, AS names) the user logged in from in the last month; hosting ranges are
    shared with strangers and never count."""
    names, ases = set(), set()
    for name, kind, as_name in (
        AuthEvent.objects.filter(username=user, result=Result.SUCCESS, ts__gt=T - USER_NETWORK_MEMORY, ts__lt=T)
        .values_list("network_name", "network_kind", "as_name")
        .distinct()
    ):
        if name and kind != NetworkKind.HOSTING:
            names.add(name)
        if as_name and kind != NetworkKind.HOSTING:
            ases.add(as_name)
    return names, ases


def _in_networks(name, kind, as_name, nets) -> bool:
    if kind == NetworkKind.HOSTING:
        return False
    return bool(name and name in nets[0]) or bool(as_name and as_name in nets[1])


def _success_finding(det, row, rule, detail):
    user = row["username"]
    entity = {"username": user, "ip": row["client_ip"], "country": row["country"], "asn": row["asn_key"]}
    if rule == "new_country":
        key = f"user:{user}|country:{row['country']}"
        verdict = f"{user} logged in from {row['country']} for the first time ({row['client_ip']})"
    elif rule == "new_asn":
        key = f"user:{user}|asn:{row['asn_key']}"
        verdict = f"{user} logged in from a new network {row['asn_key']} ({row['client_ip']})"
    elif rule == "impossible_travel":
        key = f"user:{user}"
        verdict = (
            f"{user} logged in from {row['client_ip']} ({row['country'] or '??'}) {detail['hours']} h after "
            f"{detail['from_ip']}, at least {detail['distance_km']} km away ({detail['speed_kmh']} km/h)"
        )
    else:  # dormant
        key = f"user:{user}"
        verdict = f"{user} logged in after {detail['idle_days']} days without any login"
    det.alert(
        rule,
        key,
        entity,
        count=1,
        first_seen=row["ts"],
        verdict=verdict[:255],
        samples=[_sample(row)],
        domain_name=domain_of(user),
    )


# ---------------------------------------------------------------- alerts


# What raise_alert changes on a live alert (the rest was read under the lock and is unchanged).
UPDATED_ON_REPEAT = ["severity", "last_seen", "first_seen", "count", "verdict", "entity", "resolve_after", "evidence"]


def _live_alert_for_update(rule, entity_key):
    """The open or acknowledged alert of (rule, entity), locked; None if there is none
    (at most one is live: the mon_alert_one_live_per_entity unique index)."""
    return _live_alerts_for_update(rule, [entity_key]).get(entity_key)


def _live_alerts_for_update(rule, entity_keys, resolving_at=None) -> dict:
    """{entity_key: its open or acknowledged alert of `rule`}, locked, in one query per 500
    entities (at most one live alert per (rule, entity): a unique index). Raw SQL and
    _alert_from_row: compiling the equivalent queryset was the largest single cost of a
    replayed minute. With resolving_at, leaves out the open alerts auto_resolve(resolving_at)
    would resolve. SQLite has no FOR UPDATE (its IMMEDIATE transactions are serialised already)."""
    from django.db import connection

    table = connection.ops.quote_name(Alert._meta.db_table)
    lock = " FOR UPDATE" if connection.features.has_select_for_update else ""
    found = {}
    keys = sorted(entity_keys)
    with connection.cursor() as cursor:
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ", ".join(["%s"] * len(chunk))
            params = [rule, *chunk, Alert.Status.OPEN, Alert.Status.ACKNOWLEDGED]
            unresolved = ""
            if resolving_at is not None:
                unresolved = " AND (status <> %s OR resolve_after IS NULL OR resolve_after >= %s)"
                params += [
                    Alert.Status.OPEN,
                    Alert._meta.get_field("resolve_after").get_db_prep_value(resolving_at, connection),
                ]
            # Identifiers come from model metadata; every value is a parameter.
            cursor.execute(
                f"SELECT * FROM {table} WHERE rule = %s AND entity_key IN ({marks}) "  # noqa: S608
                f"AND status IN (%s, %s){unresolved} ORDER BY id{lock}",
                params,
            )
            names = [c[0] for c in cursor.description]
            for row in cursor.fetchall():
                alert = _alert_from_row(names, row)
                found[alert.entity_key] = alert
    return found


def _alert_from_row(names, row):
    from django.db import connection

    fields = Alert._meta.concrete_fields
    # The instance RawQuerySet would build (same columns, the backend's and the fields'
    # converters), without its per-query set-up, paid once per alert update of an attack.
    converters = _ALERT_CONVERTERS.get(connection.vendor)
    if converters is None:
        converters = _ALERT_CONVERTERS[connection.vendor] = []
        for f in fields:
            col = f.get_col(Alert._meta.db_table)
            converters.append((col, connection.ops.get_db_converters(col) + f.get_db_converters(connection)))
    by_column = dict(zip(names, row, strict=True))
    values = []
    for f, (col, convs) in zip(fields, converters, strict=True):
        value = by_column[f.column]
        for convert in convs:
            value = convert(value, col, connection)
        values.append(value)
    return Alert.from_db(connection.alias, [f.attname for f in fields], values)


_ALERT_CONVERTERS: dict = {}  # vendor → [(column, its converters)] of Alert's fields
_UPDATE_ALERT_SQL: dict = {}


def _update_alert(pk, **values) -> None:
    """Alert.objects.filter(pk=pk).update(**values) for plain column values, its SQL written once
    per set of columns (the ORM compiled it for every update of an ongoing attack's alerts)."""
    from django.db import connection

    names = tuple(sorted(values))
    sql = _UPDATE_ALERT_SQL.get(names)
    if sql is None:
        table = connection.ops.quote_name(Alert._meta.db_table)
        sets = ", ".join(f"{connection.ops.quote_name(Alert._meta.get_field(n).column)} = %s" for n in names)
        sql = _UPDATE_ALERT_SQL[names] = f"UPDATE {table} SET {sets} WHERE id = %s"  # noqa: S608 - model metadata
    params = [Alert._meta.get_field(n).get_db_prep_save(values[n], connection) for n in names]
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, pk])


# What Detection.flush writes of every alert a slice updated.
FLUSHED = [*UPDATED_ON_REPEAT, "action", "action_expires_at"]


def _update_alerts(alerts) -> None:
    """_update_alert(a.pk, **{n: getattr(a, n) for n in FLUSHED}) for every alert, in one
    UPDATE … FROM unnest(arrays) on PostgreSQL (an alert storm updated thousands one by one)."""
    from django.db import connection

    if connection.vendor != "postgresql" or len(alerts) == 1:
        for a in alerts:
            _update_alert(a.pk, **{n: getattr(a, n) for n in FLUSHED})
        return
    from mailadmin.monitoring.ingest import bound_cursor

    table = connection.ops.quote_name(Alert._meta.db_table)
    fields = [Alert._meta.get_field(n) for n in FLUSHED]
    casts, params = _unnest_arrays([Alert._meta.pk, *fields], alerts)
    quoted = [connection.ops.quote_name(f.column) for f in fields]
    sets = [f"{column} = v.{column}" for column in quoted]
    columns = ", ".join(["id", *quoted])
    with bound_cursor() as cursor:
        # Identifiers and types come from model metadata; every value is a parameter.
        cursor.execute(
            f"UPDATE {table} SET {', '.join(sets)} FROM unnest({', '.join(casts)}) AS v({columns}) "  # noqa: S608
            f"WHERE {table}.id = v.id",
            params,
        )


def raise_alert(
    rule,
    entity_key,
    entity,
    *,
    severity,
    ts,
    first_seen,
    count,
    window_seconds,
    verdict,
    samples,
    domain_name="",
    notify=True,
    absent=False,
):
    """Open a new alert or update the live one for (rule, entity). Returns (alert, is_new_or_escalated).

    count > 0 is the rule's count over its window (kept as a maximum); count < 0 adds -count.
    absent: this transaction has read already that none is live (a concurrent insert is still caught).
    """
    # A savepoint only around the INSERT (what a concurrent worker can make fail): the
    # common case, updating the live alert, costs no SAVEPOINT/RELEASE round trips.
    with transaction.atomic(savepoint=False):
        for attempt in range(3):
            alert = None if absent and attempt == 0 else _live_alert_for_update(rule, entity_key)
            if alert is None:
                try:
                    with transaction.atomic():
                        alert = _new_alert(
                            rule,
                            entity_key,
                            entity,
                            severity=severity,
                            ts=ts,
                            first_seen=first_seen,
                            count=count,
                            window_seconds=window_seconds,
                            verdict=verdict,
                            samples=samples,
                            domain_name=domain_name,
                        )
                        alert.save(force_insert=True)
                except IntegrityError:
                    continue  # another worker opened it at the same moment: update that one
                fresh = True
            else:
                fresh = _repeat_alert(
                    alert,
                    severity=severity,
                    ts=ts,
                    first_seen=first_seen,
                    count=count,
                    window_seconds=window_seconds,
                    verdict=verdict,
                    entity=entity,
                    samples=samples,
                )
                _update_alert(alert.pk, **{n: getattr(alert, n) for n in UPDATED_ON_REPEAT})  # set just above
            if fresh and notify:
                from mailadmin.monitoring import notify as notify_mod

                transaction.on_commit(lambda alert_id=alert.pk: notify_mod.alert_raised(alert_id))
            return alert, fresh
    raise RuntimeError(f"could not raise alert {rule} {entity_key}")


def _new_alert(
    rule, entity_key, entity, *, severity, ts, first_seen, count, window_seconds, verdict, samples, domain_name=""
):
    """The alert raise_alert opens for a first finding (not saved)."""
    return Alert(
        rule=rule,
        entity_key=entity_key[:400],
        entity={k: v for k, v in entity.items() if v not in (None, "")},
        severity=severity,
        verdict=verdict,
        domain_name=domain_name,
        first_seen=min(first_seen, ts),
        last_seen=ts,
        count=abs(count),
        window_seconds=window_seconds,
        evidence=samples[:MAX_EVIDENCE],
        resolve_after=ts + dt.timedelta(seconds=max(window_seconds, 600) * 2),
    )


def _insert_alerts(alerts) -> None:
    """INSERT these new alerts in one statement per 500 (RETURNING their ids, set on them), except
    any whose (rule, entity) another transaction opened meanwhile: those keep pk None (the
    unique index of live alerts; ON CONFLICT DO NOTHING instead of an error and a savepoint)."""
    from django.db import connection

    table = connection.ops.quote_name(Alert._meta.db_table)
    fields = [f for f in Alert._meta.concrete_fields if not f.primary_key]
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    one = "(" + ", ".join(["%s"] * len(fields)) + ")"
    # The unique index's own condition, as literals: the server matches the conflict target to it.
    live = ", ".join(f"'{status}'" for status in (Alert.Status.OPEN, Alert.Status.ACKNOWLEDGED))
    by_key = {(a.rule, a.entity_key): a for a in alerts}
    per = 500 if connection.vendor == "postgresql" else max(1, 900 // len(fields))  # SQLite's variable limit
    with connection.cursor() as cursor:
        for start in range(0, len(alerts), per):
            chunk = alerts[start : start + per]
            params = [f.get_db_prep_save(getattr(a, f.attname), connection) for a in chunk for f in fields]
            # Identifiers come from model metadata; every value is a parameter.
            cursor.execute(
                f"INSERT INTO {table} ({columns}) VALUES {', '.join([one] * len(chunk))} "  # noqa: S608
                f"ON CONFLICT (rule, entity_key) WHERE status IN ({live}) DO NOTHING RETURNING id, rule, entity_key",
                params,
            )
            for pk, rule, entity_key in cursor.fetchall():
                alert = by_key[(rule, entity_key)]
                alert.pk, alert._state.adding, alert._state.db = pk, False, connection.alias


def _repeat_alert(alert, *, severity, ts, first_seen, count, window_seconds, verdict, entity, samples) -> bool:
    """Apply one more finding to a live alert in memory (raise_alert's update). Returns is_escalated."""
    quiet = dt.timedelta(seconds=max(window_seconds, 600) * 2)
    entity = {k: v for k, v in entity.items() if v not in (None, "")}
    fresh = SEVERITY_RANK[severity] > SEVERITY_RANK[alert.severity]
    if fresh:
        alert.severity = severity
    alert.last_seen = max(alert.last_seen, ts)
    alert.first_seen = min(alert.first_seen, first_seen)
    alert.count = alert.count + (-count) if count < 0 else max(alert.count, count)
    alert.verdict = verdict
    alert.entity = {**alert.entity, **entity}
    alert.resolve_after = alert.last_seen + quiet
    seen = {(s.get("ts"), s.get("ip"), s.get("username")) for s in alert.evidence}
    new = [s for s in samples if (s.get("ts"), s.get("ip"), s.get("username")) not in seen]
    alert.evidence = (alert.evidence + new)[:MAX_EVIDENCE]
    return fresh


def auto_resolve(now) -> int:
    """Alerts quiet for two windows resolve themselves (a new episode opens a new alert)."""
    return Alert.objects.filter(status=Alert.Status.OPEN, resolve_after__lt=now).update(
        status=Alert.Status.RESOLVED, resolved_at=now
    )


_last_surge_minute = {"value": None}


def surge_check(T, *, notify=True) -> Alert | None:
    """Server-wide failures in the last window vs the same hour's 7-day baseline (once a minute)."""
    p = rule_settings().get("surge")
    if not p:
        return None
    minute = T.replace(second=0, microsecond=0)
    if _last_surge_minute["value"] == minute:
        return None
    _last_surge_minute["value"] = minute
    window = dt.timedelta(minutes=float(p["window_minutes"]))
    failures = Rollup.objects.filter(dimension="all", result__in=FAILURE_RESULTS)
    current = failures.filter(minute__gt=T - window, minute__lte=T).aggregate(n=Sum("count"))["n"] or 0
    if current < p["min_failures"]:
        return None
    days = int(p["baseline_days"])
    hour_start = T.replace(minute=0, second=0, microsecond=0)
    q = Q()
    for d in range(1, days + 1):
        start = hour_start - dt.timedelta(days=d)
        q |= Q(minute__gte=start, minute__lt=start + dt.timedelta(hours=1))
    past = failures.filter(q).aggregate(n=Sum("count"))["n"] or 0
    per_window = past / (days * (3600 / window.total_seconds()))
    if current < float(p["factor"]) * per_window:
        return None
    ratio = f"{current / per_window:.0f}x" if per_window else "no"
    alert, _ = raise_alert(
        "surge",
        "server",
        {},
        severity=p["severity"],
        ts=T,
        first_seen=T - window,
        count=current,
        window_seconds=int(window.total_seconds()),
        verdict=f"{current} failed logins in {_duration(window)}: {ratio} the usual for this hour",
        samples=[],
        notify=notify,
    )
    return alert


def run_scheduled(now) -> dict:
    """Beat: resolve quiet alerts and check for a surge even when no batch arrives."""
    resolved = auto_resolve(now)
    surge = surge_check(now)
    return {"resolved": resolved, "surge": bool(surge)}


def counts_by_result(rows) -> Counter:
    return Counter(r["result"] for r in rows)
