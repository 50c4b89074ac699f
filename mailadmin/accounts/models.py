"""Mail domains (and, in later modules, mailboxes, aliases and credentials)."""

from django.core.validators import MinValueValidator
from django.db import models
from django.db.models.functions import Lower
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
