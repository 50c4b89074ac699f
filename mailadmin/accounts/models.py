"""Mail domains, mailboxes, aliases, app passwords and the password policy.

Credential fields are written only by mailadmin.accounts.credentials.
"""

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Value
from django.db.models.functions import Coalesce, Lower
from django.urls import reverse


class DomainQuerySet(models.QuerySet):
    def visible_to(self, user):
        """The one scoping rule for domains: every view, query and export uses it."""
        if not getattr(user, "is_authenticated", False) or not user.is_active:
            return self.none()
        if user.sees_all_domains:
            return self
        return self.filter(pk__in=user.domains.values("pk"))

    def writable_by(self, user):
        if not getattr(user, "is_authenticated", False) or not user.can_write:
            return self.none()
        return self.visible_to(user)


class Domain(models.Model):
    # Stored as the IDNA A-label ("xn--bcher-kva.example"); unicode_name is for display.
    name = models.CharField(max_length=253)
    description = models.CharField(max_length=255, blank=True)
    is_active = models.BooleanField("active", default=True)
    max_mailboxes = models.PositiveIntegerField(default=0, help_text="0 means no limit.")
    default_send_rate = models.PositiveIntegerField(
        "default send rate per mailbox per hour",
        default=200,
        validators=[MinValueValidator(1)],
    )
    cram_md5_enabled = models.BooleanField("CRAM-MD5 enabled", default=False)
    require_app_passwords = models.BooleanField(
        default=False, help_text="Refuse the mailbox password for SMTP; only app passwords work."
    )
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    objects = DomainQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(Lower("name"), name="accounts_domain_name_ci_unique")]

    def __str__(self):
        return self.unicode_name

    def get_absolute_url(self):
        return reverse("accounts:domain_detail", args=[self.pk])

    @property
    def unicode_name(self):
        from mailadmin.accounts.validators import unicode_domain_name

        return unicode_domain_name(self.name)


# --- Mailboxes, aliases, app passwords, password policy -------------------------------


class MailboxQuerySet(models.QuerySet):
    """Mailboxes are scoped through their domain: one rule, Domain's."""

    def visible_to(self, user):
        return self.filter(domain__in=Domain.objects.visible_to(user))

    def writable_by(self, user):
        return self.filter(domain__in=Domain.objects.writable_by(user))


class Mailbox(models.Model):
    class State(models.TextChoices):
        ACTIVE = "active", "Active"
        SUSPENDED = "suspended", "Suspended"
        DISABLED = "disabled", "Disabled"

    domain = models.ForeignKey(Domain, on_delete=models.CASCADE, related_name="mailboxes")
    # NFC-normalised dot-atom; may contain UTF-8 (SMTPUTF8). Unique per domain ignoring case.
    local_part = models.CharField(max_length=64)
    display_name = models.CharField(max_length=150, blank=True)
    state = models.CharField(max_length=10, choices=State.choices, default=State.ACTIVE, db_index=True)
    suspend_reason = models.CharField(max_length=255, blank=True)
    send_rate_per_hour = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)], help_text="Empty: the domain's default."
    )
    # Credentials: written only by mailadmin.accounts.credentials.
    password_hash = models.CharField(max_length=255, blank=True)
    password_changed_at = models.DateTimeField(null=True, blank=True)
    scram_salt = models.BinaryField(null=True, blank=True)
    scram_iterations = models.PositiveIntegerField(null=True, blank=True)
    scram_stored_key = models.BinaryField(null=True, blank=True)
    scram_server_key = models.BinaryField(null=True, blank=True)
    # Fernet token (MultiFernet, CREDENTIAL_ENCRYPTION_KEYS) of the HMAC-MD5 state; "" = none.
    cram_md5_state = models.TextField(blank=True)
    # Bumped on every credential change (password, app password created/revoked)
    # so caches elsewhere can tell that something changed.
    credentials_version = models.PositiveIntegerField(default=1)
    expiry_notice_sent_at = models.DateTimeField(null=True, blank=True)
    last_login_at = models.DateTimeField(null=True, blank=True)
    last_login_ip = models.GenericIPAddressField(null=True, blank=True)
    last_login_mechanism = models.CharField(max_length=20, blank=True)
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    objects = MailboxQuerySet.as_manager()

    class Meta:
        ordering = ["domain__name", "local_part"]
        verbose_name_plural = "mailboxes"
        constraints = [
            models.UniqueConstraint("domain", Lower("local_part"), name="accounts_mailbox_address_ci_unique"),
        ]

    def __str__(self):
        return self.address

    def get_absolute_url(self):
        return reverse("mailboxes:detail", args=[self.pk])

    @property
    def address(self):
        return f"{self.local_part}@{self.domain.name}"

    @property
    def unicode_address(self):
        return f"{self.local_part}@{self.domain.unicode_name}"

    @property
    def is_active(self):
        return self.state == self.State.ACTIVE

    @property
    def effective_send_rate(self):
        return self.send_rate_per_hour or self.domain.default_send_rate

    @property
    def has_scram(self):
        return self.scram_stored_key is not None

    @property
    def has_cram_md5(self):
        return bool(self.cram_md5_state)


class AliasQuerySet(models.QuerySet):
    def visible_to(self, user):
        return self.filter(mailbox__in=Mailbox.objects.visible_to(user))

    def writable_by(self, user):
        return self.filter(mailbox__in=Mailbox.objects.writable_by(user))


class Alias(models.Model):
    """Another address a mailbox may send as. Never the address of a mailbox
    (checked in mailadmin.accounts.mailboxes, under a lock on the domain row)."""

    mailbox = models.ForeignKey(Mailbox, on_delete=models.CASCADE, related_name="aliases")
    domain = models.ForeignKey(Domain, on_delete=models.CASCADE, related_name="aliases")
    local_part = models.CharField(max_length=64)
    created = models.DateTimeField(auto_now_add=True)

    objects = AliasQuerySet.as_manager()

    class Meta:
        ordering = ["domain__name", "local_part"]
        verbose_name_plural = "aliases"
        constraints = [
            models.UniqueConstraint("domain", Lower("local_part"), name="accounts_alias_address_ci_unique"),
        ]

    def __str__(self):
        return self.address

    @property
    def address(self):
        return f"{self.local_part}@{self.domain.name}"


class AppPasswordQuerySet(models.QuerySet):
    def visible_to(self, user):
        return self.filter(mailbox__in=Mailbox.objects.visible_to(user))

    def writable_by(self, user):
        return self.filter(mailbox__in=Mailbox.objects.writable_by(user))

    def usable(self, now=None):
        from django.utils import timezone

        now = now or timezone.now()
        return self.filter(revoked_at__isnull=True).filter(
            models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=now)
        )


class AppPassword(models.Model):
    """A server-generated SMTP-only secret for one mail client; shown once."""

    mailbox = models.ForeignKey(Mailbox, on_delete=models.CASCADE, related_name="app_passwords")
    name = models.CharField(max_length=100, help_text='Which client uses it, e.g. "Thunderbird at home".')
    password_hash = models.CharField(max_length=255)
    created = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    # CIDR strings ("192.0.2.0/24", "2001:db8::/32"); empty list = anywhere.
    allowed_networks = models.JSONField(default=list, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    last_used_ip = models.GenericIPAddressField(null=True, blank=True)
    last_used_mechanism = models.CharField(max_length=20, blank=True)

    objects = AppPasswordQuerySet.as_manager()

    class Meta:
        ordering = ["-created", "-id"]

    def __str__(self):
        return f"{self.name} ({self.mailbox})"

    @property
    def is_revoked(self):
        return self.revoked_at is not None

    def is_expired(self, now=None):
        from django.utils import timezone

        return self.expires_at is not None and self.expires_at <= (now or timezone.now())


class PasswordPolicy(models.Model):
    """The password rules. One global row (domain empty); a domain may have its
    own row, which then replaces the global one for that domain entirely."""

    domain = models.OneToOneField(
        Domain, null=True, blank=True, on_delete=models.CASCADE, related_name="password_policy"
    )
    min_length = models.PositiveIntegerField(default=12, validators=[MinValueValidator(8)])
    max_length = models.PositiveIntegerField(default=256, validators=[MinValueValidator(128)])
    require_lowercase = models.BooleanField(default=False)
    require_uppercase = models.BooleanField(default=False)
    require_digit = models.BooleanField(default=False)
    require_symbol = models.BooleanField(default=False)
    min_zxcvbn_score = models.PositiveSmallIntegerField(
        "minimum zxcvbn score", default=3, validators=[MaxValueValidator(4)], help_text="0 (any) to 4 (strongest)."
    )
    reject_common = models.BooleanField("reject common passwords", default=True)
    reject_address_parts = models.BooleanField("reject passwords containing the local part or domain", default=True)
    history_count = models.PositiveSmallIntegerField(
        "no reuse of the last N passwords", default=5, validators=[MaxValueValidator(24)]
    )
    max_age_days = models.PositiveIntegerField("maximum age in days", default=0, help_text="0 means never.")
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "password policies"
        constraints = [
            # At most one global row: NULL domains compare equal through COALESCE.
            models.UniqueConstraint(Coalesce("domain", Value(0)), name="accounts_passwordpolicy_one_per_scope"),
            models.CheckConstraint(
                condition=models.Q(max_length__gte=models.F("min_length")), name="accounts_passwordpolicy_lengths"
            ),
        ]

    def __str__(self):
        return f"Password policy ({self.domain or 'global'})"

    @classmethod
    def global_policy(cls):
        policy, _ = cls.objects.get_or_create(domain=None)
        return policy

    @classmethod
    def for_domain(cls, domain):
        """The policy in force for a domain: its own row, else the global one."""
        if domain is not None and domain.pk:
            rows = {p.domain_id: p for p in cls.objects.filter(models.Q(domain=domain) | models.Q(domain=None))}
            if domain.pk in rows:
                return rows[domain.pk]
            if None in rows:
                return rows[None]
        return cls.global_policy()

    @property
    def is_global(self):
        return self.domain_id is None


class PasswordHistory(models.Model):
    """Hashes (Argon2id) of a mailbox's previous passwords, for the no-reuse rule."""

    mailbox = models.ForeignKey(Mailbox, on_delete=models.CASCADE, related_name="password_history")
    password_hash = models.CharField(max_length=255)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created", "-id"]
        verbose_name_plural = "password history"

    def __str__(self):
        return f"{self.mailbox} at {self.created:%Y-%m-%d %H:%M}"
