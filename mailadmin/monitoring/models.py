"""Auth events, their per-minute rollups, detector settings, alerts, blocks and networks.

Scoping (one rule, used by every view, export and email):
- superadmins and all-domain auditors see everything;
- a domain admin (or scoped auditor) sees rows whose ``domain_name`` is one of
  their domains: events and alerts by the domain of the username concerned,
  IP+user blocks by the user's domain;
- rows about an IP or prefix alone (no username: IP brute force, spray,
  stuffing, low-and-slow, surge, IP/prefix blocks) concern every domain, so
  they are global: only superadmins and all-domain auditors see them. The
  events behind them stay visible to each domain admin for their own users.
"""

from __future__ import annotations

import ipaddress

from django.db import models
from django.utils import timezone


def domain_of(username: str | None) -> str:
    if not username or "@" not in username:
        return ""
    return username.rsplit("@", 1)[1].lower()[:253]


class ScopedQuerySet(models.QuerySet):
    """Rows carry ``domain_name``; blank means global (superadmins only)."""

    def visible_to(self, user):
        if not getattr(user, "is_authenticated", False) or not user.is_active:
            return self.none()
        if user.sees_all_domains:
            return self
        names = [n.lower() for n in user.domains.values_list("name", flat=True)]
        return self.filter(domain_name__in=names)

    def writable_by(self, user):
        if not getattr(user, "is_authenticated", False) or not user.can_write:
            return self.none()
        return self.visible_to(user)


class GlobalQuerySet(models.QuerySet):
    """Server-wide configuration: readable by everyone with full visibility, written by superadmins."""

    def visible_to(self, user):
        if not getattr(user, "is_authenticated", False) or not user.is_active:
            return self.none()
        return self if user.sees_all_domains else self.none()

    def writable_by(self, user):
        if not getattr(user, "is_authenticated", False) or not user.is_superadmin:
            return self.none()
        return self


class Result(models.TextChoices):
    SUCCESS = "success"
    BAD_CREDENTIALS = "bad_credentials"
    UNKNOWN_USER = "unknown_user"
    DISABLED = "disabled"
    BLOCKED = "blocked"
    TLS_REQUIRED = "tls_required"
    CANCELLED = "cancelled"
    MALFORMED = "malformed"
    TEMP_FAILURE = "temp_failure"


# Results that are a wrong guess at a credential (what the detectors count as failures).
FAILURE_RESULTS = (Result.BAD_CREDENTIALS, Result.UNKNOWN_USER, Result.DISABLED)


class AuthEvent(models.Model):
    """One AUTH attempt as published by the smtpd (DESIGN "Auth event"), plus enrichment."""

    event_id = models.UUIDField(unique=True)
    ts = models.DateTimeField()
    received = models.DateTimeField(default=timezone.now)
    node = models.CharField(max_length=100, blank=True)
    session_id = models.CharField(max_length=64, blank=True)
    attempt = models.PositiveIntegerField(default=1)
    client_ip = models.GenericIPAddressField()
    prefix = models.CharField(max_length=50, help_text="/24 (IPv4) or /64 (IPv6) of client_ip")
    listener = models.PositiveIntegerField(null=True, blank=True)
    tls = models.CharField(max_length=100, blank=True)
    helo = models.CharField(max_length=255, blank=True)
    mechanism = models.CharField(max_length=20, blank=True)
    username = models.CharField(max_length=320, blank=True)
    domain_name = models.CharField(max_length=253, blank=True)
    credential = models.CharField(max_length=64, blank=True)
    result = models.CharField(max_length=20, choices=Result.choices)
    pw_fp = models.SmallIntegerField(null=True, blank=True)
    # A failure the detectors count: not explained as a stale client on a known network.
    suspect = models.BooleanField(default=False)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    # Enrichment (named networks first, then the offline GeoIP database).
    country = models.CharField(max_length=2, blank=True)
    city = models.CharField(max_length=100, blank=True)
    latitude = models.FloatField(null=True, blank=True)
    longitude = models.FloatField(null=True, blank=True)
    asn = models.PositiveIntegerField(null=True, blank=True)
    as_name = models.CharField(max_length=200, blank=True)
    network_name = models.CharField(max_length=200, blank=True)
    network_kind = models.CharField(max_length=20, blank=True)

    objects = ScopedQuerySet.as_manager()

    class Meta:
        ordering = ["-ts", "-id"]
        indexes = [
            models.Index(fields=["ts"], name="mon_event_ts"),
            models.Index(fields=["username", "ts"], name="mon_event_user_ts"),
            models.Index(fields=["client_ip", "ts"], name="mon_event_ip_ts"),
            models.Index(fields=["prefix", "ts"], name="mon_event_prefix_ts"),
            # Covering: a domain admin's searches with rare filters and the window spans of their
            # charts read the domain's events from the index alone (the heap holds one domain's
            # rows scattered among every other domain's: one page read per row otherwise).
            models.Index(
                fields=["domain_name", "ts", "id"],
                include=["result", "mechanism", "country", "asn", "listener", "tls", "client_ip", "username"],
                name="mon_event_domain_cover",
            ),
        ]

    def __str__(self):
        return f"{self.ts:%Y-%m-%d %H:%M:%S} {self.client_ip} {self.username or '-'} {self.result}"

    @property
    def is_failure(self):
        return self.result in FAILURE_RESULTS


class Rollup(models.Model):
    """Per-minute counts by one dimension, maintained by ingest (upserted increments).

    dimension "all" has key "" (server-wide totals); the others key by the value.
    Charts read e.g. dimension="all" over a day; detectors read e.g.
    dimension="ip", key=<ip>, result in FAILURE_RESULTS over 10 minutes.
    """

    class Dimension(models.TextChoices):
        ALL = "all"
        IP = "ip"
        PREFIX = "prefix"
        USERNAME = "username"
        COUNTRY = "country"
        ASN = "asn"
        MECHANISM = "mechanism"
        DOMAIN = "domain"  # key = the username's domain (a domain admin's short-range timeline)

    minute = models.DateTimeField()
    dimension = models.CharField(max_length=10, choices=Dimension.choices)
    key = models.CharField(max_length=320, blank=True)
    result = models.CharField(max_length=20, choices=Result.choices)
    count = models.PositiveIntegerField(default=0)
    # Domain of the username for dimension=username and domain (for scoping charts); blank otherwise.
    domain_name = models.CharField(max_length=253, blank=True)

    objects = ScopedQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["dimension", "key", "minute", "result"], name="mon_rollup_unique"),
        ]
        indexes = [models.Index(fields=["dimension", "minute"], name="mon_rollup_dim_minute")]

    def __str__(self):
        return f"{self.minute:%Y-%m-%d %H:%M} {self.dimension}={self.key} {self.result}: {self.count}"


class HourlyRollup(models.Model):
    """Per-hour counts: the same dimensions as Rollup plus "listener", maintained by ingest
    in the same transaction as the minute rollups (mailadmin.monitoring.hourly).

    Charts read these for the full hours of long ranges: a 30-day range is 720 hour
    rows per key instead of 43,200 minute rows. dimension "listener" keys by
    "<port>|<tls>" (port blank for the web listener); it has no minute counterpart.
    """

    LISTENER = "listener"
    DOMAIN = "domain"

    hour = models.DateTimeField()
    dimension = models.CharField(max_length=10)
    key = models.CharField(max_length=320, blank=True)
    result = models.CharField(max_length=20, choices=Result.choices)
    count = models.PositiveIntegerField(default=0)
    # Domain of the username for dimension=username (for scoping); blank otherwise.
    domain_name = models.CharField(max_length=253, blank=True)

    objects = ScopedQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["dimension", "key", "hour", "result"], name="mon_hourly_rollup_unique"),
        ]
        indexes = [models.Index(fields=["dimension", "hour"], name="mon_hourly_rollup_dim_hour")]

    def __str__(self):
        return f"{self.hour:%Y-%m-%d %H:00} {self.dimension}={self.key} {self.result}: {self.count}"


class WindowState(models.Model):
    """Which whole hours the WindowTotal rows of one preset range ("24h", "7d", "30d") hold.

    Maintained by mailadmin.monitoring.windows (beat task; ingest adds late events): rows
    cover the hours [first, cut). ``version`` changes with every change of the rows, so a
    reader can tell that what it read belongs together; ``stale`` means "not built yet"
    (the next advance rebuilds it).
    """

    preset = models.CharField(max_length=4, primary_key=True)
    first = models.DateTimeField()
    cut = models.DateTimeField()
    version = models.BigIntegerField(default=0)
    stale = models.BooleanField(default=False)
    updated = models.DateTimeField(default=timezone.now)

    def __str__(self):
        return f"{self.preset}: [{self.first:%Y-%m-%d %H:00}, {self.cut:%Y-%m-%d %H:00})"


class WindowTotal(models.Model):
    """Per-key totals over the hours of a WindowState, by scope ("" = every domain, else a domain).

    dimension "ip" / "username" (every scope), "ipuser" (key = IP, sub = username, kept
    under the username's domain), and for domain scopes also "mechanism", "country",
    "listener", "result" — what the overview ranks, so a 30-day top-N reads one row per
    key instead of 720 hour rows. Derived: "ipusers" (per scope and IP, total = users
    tried) and "attackers" (per scope, total = IPs with FAILURE_RESULTS attempts).
    """

    preset = models.CharField(max_length=4)
    scope = models.CharField(max_length=253, blank=True)
    dimension = models.CharField(max_length=10)
    key = models.CharField(max_length=320, blank=True)
    sub = models.CharField(max_length=320, blank=True)
    failures = models.BigIntegerField(default=0)  # result other than success
    attacks = models.BigIntegerField(default=0)  # FAILURE_RESULTS
    total = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["preset", "scope", "dimension", "key", "sub"], name="mon_window_unique"),
        ]
        # Users tried by an IP across every domain (the unique index leads with the scope).
        indexes = [
            models.Index(fields=["preset", "dimension", "key"], name="mon_window_dim_key"),
            # Top-N of one scope: the busiest keys first.
            models.Index(fields=["preset", "scope", "dimension", "-failures", "key"], name="mon_window_top"),
        ]

    def __str__(self):
        return f"{self.preset} {self.scope or '*'} {self.dimension}={self.key} {self.sub}: {self.failures}"


class SentCount(models.Model):
    """Messages sent per mailbox per hour (from monitoring.record_messages_sent)."""

    username = models.CharField(max_length=320)
    domain_name = models.CharField(max_length=253, blank=True)
    hour = models.DateTimeField()
    count = models.PositiveIntegerField(default=0)

    objects = ScopedQuerySet.as_manager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["username", "hour"], name="mon_sent_unique")]
        indexes = [models.Index(fields=["hour"], name="mon_sent_hour")]

    def __str__(self):
        return f"{self.username} {self.hour:%Y-%m-%d %H:00}: {self.count}"


class SentItem(models.Model):
    """The id of every sent-count item already counted: a redelivered batch adds nothing."""

    item_id = models.UUIDField(unique=True)
    received = models.DateTimeField(db_index=True)

    def __str__(self):
        return str(self.item_id)


class NetworkKind(models.TextChoices):
    OFFICE = "office"
    TRUSTED = "trusted"
    VPN = "vpn"
    HOSTING = "hosting"
    MOBILE = "mobile"
    RESIDENTIAL = "residential"


def normalise_cidr(value: str, field: str) -> str:
    """ "192.0.2.7/24" -> "192.0.2.0/24"; a clear error at the field otherwise."""
    from django.core.exceptions import ValidationError

    try:
        return str(ipaddress.ip_network((value or "").strip(), strict=False))
    except ValueError:
        raise ValidationError({field: "Not a valid CIDR network."}) from None


class NamedNetwork(models.Model):
    """Admin-defined CIDR with a name and kind; looked up before GeoIP."""

    network = models.CharField(max_length=50, unique=True, help_text="CIDR, e.g. 192.0.2.0/24")
    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=20, choices=NetworkKind.choices)
    country = models.CharField(max_length=2, blank=True)
    city = models.CharField(max_length=100, blank=True)
    latitude = models.FloatField(null=True, blank=True)
    longitude = models.FloatField(null=True, blank=True)
    asn = models.PositiveIntegerField(null=True, blank=True)
    as_name = models.CharField(max_length=200, blank=True)
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    objects = GlobalQuerySet.as_manager()

    class Meta:
        ordering = ["network"]

    def __str__(self):
        return f"{self.network} {self.name} ({self.kind})"

    def save(self, *args, **kwargs):
        super().save(*args, **kwargs)
        from mailadmin.monitoring.enrich import networks_changed

        networks_changed()

    def delete(self, *args, **kwargs):
        result = super().delete(*args, **kwargs)
        from mailadmin.monitoring.enrich import networks_changed

        networks_changed()
        return result

    def clean(self):
        self.network = normalise_cidr(self.network, "network")


class AllowedNetwork(models.Model):
    """Never blocked, never flagged as attacker (allowlisted networks always win)."""

    cidr = models.CharField(max_length=50, unique=True)
    note = models.CharField(max_length=255, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    objects = GlobalQuerySet.as_manager()

    class Meta:
        ordering = ["cidr"]

    def __str__(self):
        return self.cidr

    def save(self, *args, **kwargs):
        super().save(*args, **kwargs)
        from mailadmin.monitoring.blocks import announce_change

        announce_change()

    def delete(self, *args, **kwargs):
        result = super().delete(*args, **kwargs)
        from mailadmin.monitoring.blocks import announce_change

        announce_change()
        return result

    def clean(self):
        self.cidr = normalise_cidr(self.cidr, "cidr")


class BlockQuerySet(ScopedQuerySet):
    def active(self, now=None):
        now = now or timezone.now()
        return self.filter(lifted_at__isnull=True, expires_at__gt=now)


class Block(models.Model):
    class Kind(models.TextChoices):
        IP = "ip", "IP address"
        PREFIX = "prefix", "Network prefix"
        IP_USER = "ip_user", "IP + username"

    kind = models.CharField(max_length=10, choices=Kind.choices)
    value = models.CharField(max_length=50, help_text="IP address or CIDR prefix")
    username = models.CharField(max_length=320, blank=True)
    domain_name = models.CharField(max_length=253, blank=True)
    reason = models.CharField(max_length=255)
    rule = models.CharField(max_length=50, blank=True)
    alert = models.ForeignKey("Alert", null=True, blank=True, on_delete=models.SET_NULL, related_name="blocks")
    created = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    lifted_at = models.DateTimeField(null=True, blank=True)
    lifted_by = models.CharField(max_length=254, blank=True)
    # 0 = first offence (15 min), each repeat doubles up to one week.
    escalation = models.PositiveSmallIntegerField(default=0)

    objects = BlockQuerySet.as_manager()

    class Meta:
        ordering = ["-created"]
        indexes = [
            models.Index(fields=["kind", "value"], name="mon_block_kind_value"),
            models.Index(fields=["expires_at"], name="mon_block_expires"),
        ]

    def __str__(self):
        target = f"{self.value} {self.username}".strip()
        return f"{self.get_kind_display()} {target} until {self.expires_at:%Y-%m-%d %H:%M}"

    def save(self, *args, **kwargs):
        if self.kind == self.Kind.IP_USER and not self.domain_name:
            self.domain_name = domain_of(self.username)
        super().save(*args, **kwargs)
        from mailadmin.monitoring.blocks import announce_change

        announce_change()

    def delete(self, *args, **kwargs):
        result = super().delete(*args, **kwargs)
        from mailadmin.monitoring.blocks import announce_change

        announce_change()
        return result

    def is_active(self, now=None):
        now = now or timezone.now()
        return self.lifted_at is None and self.expires_at > now


class DetectorSetting(models.Model):
    """Per-rule switch and thresholds/windows; defaults live in detectors.DEFAULTS."""

    rule = models.CharField(max_length=50, unique=True)
    enabled = models.BooleanField(default=True)
    params = models.JSONField(default=dict, blank=True, help_text="Overrides of the rule's default thresholds")
    updated = models.DateTimeField(auto_now=True)

    objects = GlobalQuerySet.as_manager()

    class Meta:
        ordering = ["rule"]

    def __str__(self):
        return self.rule


class Severity(models.TextChoices):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


SEVERITY_RANK = {Severity.LOW: 0, Severity.MEDIUM: 1, Severity.HIGH: 2, Severity.CRITICAL: 3}


class Alert(models.Model):
    class Status(models.TextChoices):
        OPEN = "open"
        ACKNOWLEDGED = "acknowledged"
        RESOLVED = "resolved"
        SAFE = "safe", "Marked safe"

    rule = models.CharField(max_length=50)
    # e.g. "ip:203.0.113.9", "user:ann@a.example", "ip_user:203.0.113.9|ann@a.example"
    entity_key = models.CharField(max_length=400)
    entity = models.JSONField(default=dict, help_text="ip, prefix, username, asn, country")
    severity = models.CharField(max_length=10, choices=Severity.choices)
    status = models.CharField(max_length=15, choices=Status.choices, default=Status.OPEN)
    verdict = models.CharField(max_length=255, blank=True)
    domain_name = models.CharField(max_length=253, blank=True)
    first_seen = models.DateTimeField()
    last_seen = models.DateTimeField()
    count = models.PositiveIntegerField(default=0, help_text="Attempts counted by the rule")
    window_seconds = models.PositiveIntegerField(default=0)
    evidence = models.JSONField(default=list, blank=True, help_text="Up to 50 sample attempts")
    action = models.CharField(max_length=255, blank=True)
    action_expires_at = models.DateTimeField(null=True, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    # Two quiet windows after last_seen: the alert resolves itself (detectors.auto_resolve).
    resolve_after = models.DateTimeField(null=True, blank=True)
    status_changed_by = models.CharField(max_length=254, blank=True)
    # Email bookkeeping: when the immediate mail went out / which digest included it.
    notified_at = models.DateTimeField(null=True, blank=True)
    digested_at = models.DateTimeField(null=True, blank=True)

    objects = ScopedQuerySet.as_manager()

    class Meta:
        ordering = ["-last_seen"]
        indexes = [
            models.Index(fields=["rule", "entity_key", "status"], name="mon_alert_rule_entity"),
            models.Index(fields=["status", "last_seen"], name="mon_alert_status_seen"),
            models.Index(fields=["domain_name", "last_seen"], name="mon_alert_domain_seen"),
            models.Index(fields=["status", "resolve_after"], name="mon_alert_resolve"),
        ]
        constraints = [
            # One live alert per (rule, entity): repeats update it (see detectors.raise_alert).
            models.UniqueConstraint(
                fields=["rule", "entity_key"],
                condition=models.Q(status__in=["open", "acknowledged"]),
                name="mon_alert_one_live_per_entity",
            )
        ]

    def __str__(self):
        return f"{self.severity} {self.rule} {self.entity_key}"

    def get_absolute_url(self):
        return f"/monitoring/alerts/{self.pk}/"

    @property
    def is_live(self):
        return self.status in (self.Status.OPEN, self.Status.ACKNOWLEDGED)

    def set_status(self, status, *, by: str = "", now=None):
        now = now or timezone.now()
        self.status = status
        self.status_changed_by = by[:254]
        if status in (self.Status.RESOLVED, self.Status.SAFE):
            self.resolved_at = now
        self.save(update_fields=["status", "status_changed_by", "resolved_at"])

    def mark_safe(self, *, by: str = "", now=None):
        """An admin says this was fine: lift its blocks and teach the system.

        A user's login (new country/AS, travel, dormant, login after attack) goes into
        that user's baseline; an address or prefix goes on the allowlist.
        """
        now = now or timezone.now()
        self.set_status(self.Status.SAFE, by=by, now=now)
        for block in self.blocks.filter(lifted_at__isnull=True):
            block.lifted_at = now
            block.lifted_by = by[:254] or "marked safe"
            block.save(update_fields=["lifted_at", "lifted_by"])
        entity = self.entity or {}
        username = entity.get("username")
        if username and self.rule in ("new_country", "new_asn", "impossible_travel", "dormant", "success_after_attack"):
            base, _ = UserBaseline.objects.get_or_create(
                username=username, defaults={"domain_name": domain_of(username)}
            )
            if entity.get("country") and entity["country"] not in base.countries:
                base.countries = [*base.countries, entity["country"]]
            if entity.get("asn") and entity["asn"] not in base.asns:
                base.asns = [*base.asns, entity["asn"]]
            if entity.get("ip"):
                from mailadmin.monitoring.blocks import prefix_of

                prefix = prefix_of(entity["ip"])
                if prefix not in base.prefixes:
                    base.prefixes = [*base.prefixes, prefix]
            base.save()
            return None
        network = entity.get("prefix") if self.entity_key.startswith("prefix:") else entity.get("ip")
        if network:
            allowed, _ = AllowedNetwork.objects.get_or_create(
                cidr=str(ipaddress.ip_network(network, strict=False)),
                defaults={"note": f"marked safe from alert {self.pk} by {by or 'an admin'}"[:255]},
            )
            return allowed
        return None


class AlertMailLog(models.Model):
    """One alert email sent to one recipient: the throttle counts these per hour."""

    class Kind(models.TextChoices):
        IMMEDIATE = "immediate"
        HOURLY = "hourly"
        DAILY = "daily"
        OWNER = "owner"

    recipient = models.EmailField()
    kind = models.CharField(max_length=10, choices=Kind.choices)
    sent_at = models.DateTimeField(default=timezone.now)
    alert_ids = models.JSONField(default=list)
    subject = models.CharField(max_length=255)

    class Meta:
        ordering = ["-sent_at"]
        indexes = [models.Index(fields=["recipient", "sent_at"], name="mon_mail_recipient_sent")]

    def __str__(self):
        return f"{self.sent_at:%Y-%m-%d %H:%M} {self.kind} → {self.recipient}"


class PendingDigest(models.Model):
    """An alert waiting for a recipient's next digest (medium/low, or throttled high/critical)."""

    recipient = models.EmailField()
    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="+")
    digest = models.CharField(max_length=10, choices=[("hourly", "hourly"), ("daily", "daily")])
    queued_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["recipient", "alert", "digest"], name="mon_digest_unique")]

    def __str__(self):
        return f"{self.recipient} {self.digest} {self.alert_id}"


class UserBaseline(models.Model):
    """What is normal for a user: countries, ASNs and networks with past successes.

    Kept separately from raw events so retention does not erase what was learned,
    and so "marked safe" can add to it.
    """

    username = models.CharField(max_length=320, unique=True)
    domain_name = models.CharField(max_length=253, blank=True)
    first_success = models.DateTimeField(null=True, blank=True)
    last_success = models.DateTimeField(null=True, blank=True)
    success_count = models.PositiveIntegerField(default=0)
    countries = models.JSONField(default=list, blank=True)
    asns = models.JSONField(default=list, blank=True)
    # Prefixes (/24, /64) with past successes: stale-client suppression.
    prefixes = models.JSONField(default=list, blank=True)
    last_lat = models.FloatField(null=True, blank=True)
    last_lon = models.FloatField(null=True, blank=True)
    last_place_at = models.DateTimeField(null=True, blank=True)
    last_place_ip = models.CharField(max_length=50, blank=True)
    # Fingerprints of recently accepted passwords: an old one retried is a stale client.
    success_fps = models.JSONField(default=list, blank=True)

    objects = ScopedQuerySet.as_manager()

    def __str__(self):
        return self.username
