"""What a mailbox owner chooses in the portal: sign-in notices and an optional TOTP."""

from django.db import models

from mailadmin import secretbox


class OwnerSettings(models.Model):
    mailbox = models.OneToOneField("accounts.Mailbox", on_delete=models.CASCADE, related_name="owner_settings")
    notify_new_signin = models.BooleanField("email me about sign-ins from new places", default=True)
    # Base32 TOTP secret (RFC 6238, 30 s, 6 digits), sealed by mailadmin.secretbox;
    # "" = no second factor. Read and write it through `totp_key`.
    totp_secret = models.CharField(max_length=255, blank=True)
    totp_enabled_at = models.DateTimeField(null=True, blank=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "owner settings"

    def __str__(self):
        return f"Portal settings of {self.mailbox}"

    @classmethod
    def for_mailbox(cls, mailbox_id):
        settings, _ = cls.objects.get_or_create(mailbox_id=mailbox_id)
        return settings

    @property
    def has_totp(self):
        return bool(self.totp_secret)

    @property
    def totp_key(self) -> str:
        return secretbox.unseal(self.totp_secret)

    @totp_key.setter
    def totp_key(self, value: str) -> None:
        self.totp_secret = secretbox.seal(value)
