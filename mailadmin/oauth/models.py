"""OAuth2 provider models: django-oauth-toolkit's, swapped so the resource owner
is a MAILBOX, not a staff user.

Choice (see README "OAuth2 for SMTP"): DOT's grant, access token, refresh token
and ID token all have a ``user`` foreign key that DOT's validator fills from
``request.user`` and reads back into ``request.user``. We swap the five models
(DOT allows this only in a project's first migration, which this is) and
re-declare ``user`` as a foreign key to ``accounts.Mailbox``. DOT's own code then
works unchanged with a mailbox as the "user"; staff users never own tokens, and a
mailbox never becomes a Django user (so an owner can never reach the staff
dashboard). The portal's consent view passes the signed-in mailbox as the user.

Tokens are stored hashed: COMPLIANT_BCP_RFC9700_TOKEN_STORAGE keeps only the
SHA-256 ``token_checksum`` and leaves the ``token`` column blank.
"""

from django.db import models
from django.db.models import Q
from oauth2_provider.models import (
    AbstractAccessToken,
    AbstractApplication,
    AbstractGrant,
    AbstractIDToken,
    AbstractRefreshToken,
    ApplicationManager,
)

SMTP_SCOPE = "smtp"


class ApplicationQuerySet(models.QuerySet):
    def visible_to(self, user):
        """Global applications are visible to every staff user; domain-bound ones
        only to staff who see that domain."""
        from mailadmin.accounts.models import Domain

        if not getattr(user, "is_authenticated", False) or not user.is_active:
            return self.none()
        if user.sees_all_domains:
            return self
        return self.filter(Q(domain__isnull=True) | Q(domain__in=Domain.objects.visible_to(user)))

    def writable_by(self, user):
        """Superadmins manage every application; domain admins only their domains' ones."""
        from mailadmin.accounts.models import Domain

        if not getattr(user, "is_authenticated", False) or not user.can_write:
            return self.none()
        if user.is_superadmin:
            return self
        return self.filter(domain__in=Domain.objects.writable_by(user))


class _ApplicationManager(ApplicationManager.from_queryset(ApplicationQuerySet)):
    pass


class Application(AbstractApplication):
    # Staff may switch an application off: no new authorizations, no token
    # refreshes, and its existing access tokens stop working for SMTP.
    is_enabled = models.BooleanField("enabled", default=True)
    domain = models.ForeignKey(
        "accounts.Domain",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="oauth_applications",
        help_text="Only mailboxes of this domain may authorize it. Empty: every domain (superadmins only).",
    )

    objects = _ApplicationManager()

    class Meta(AbstractApplication.Meta):
        ordering = ["name", "id"]

    def natural_key(self):
        return (self.client_id,)

    def is_usable(self, request):
        # DOT calls this on issuance and on bearer validation.
        return self.is_enabled

    def allows_mailbox(self, mailbox) -> bool:
        return self.is_enabled and (self.domain_id is None or self.domain_id == mailbox.domain_id)


def _mailbox_owner(related_name):
    return models.ForeignKey(
        "accounts.Mailbox",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name=related_name,
        verbose_name="mailbox",
    )


class Grant(AbstractGrant):
    user = models.ForeignKey(
        "accounts.Mailbox", on_delete=models.CASCADE, related_name="oauth_grants", verbose_name="mailbox"
    )


class AccessTokenQuerySet(models.QuerySet):
    def visible_to(self, user):
        from mailadmin.accounts.models import Mailbox

        return self.filter(user__in=Mailbox.objects.visible_to(user))

    def writable_by(self, user):
        from mailadmin.accounts.models import Mailbox

        return self.filter(user__in=Mailbox.objects.writable_by(user))

    def of_mailbox(self, mailbox_id):
        """The portal's one scoping rule: an owner sees only their own tokens."""
        return self.filter(user_id=mailbox_id)


class AccessToken(AbstractAccessToken):
    user = _mailbox_owner("oauth_access_tokens")
    # Throttled write by mailadmin.oauth.tokens.check_bearer (at most once a minute).
    last_used = models.DateTimeField(null=True, blank=True)

    objects = AccessTokenQuerySet.as_manager()

    class Meta(AbstractAccessToken.Meta):
        ordering = ["-created", "-id"]

    def __str__(self):
        # Never the token itself.
        return f"Token #{self.pk}"


class RefreshToken(AbstractRefreshToken):
    user = _mailbox_owner("oauth_refresh_tokens")


class IDToken(AbstractIDToken):
    # OpenID Connect is off; swapped only so every OAuth table lives in one
    # first migration (DOT's migrations would otherwise form a cycle with ours).
    user = _mailbox_owner("oauth_id_tokens")
