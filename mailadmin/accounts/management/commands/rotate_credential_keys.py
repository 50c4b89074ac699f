"""Re-encrypt every stored CRAM-MD5 state, and every sealed TOTP and recovery-code seed
(mailadmin/secretbox.py), under the newest CREDENTIAL_ENCRYPTION_KEYS key.

Rotation (README "Credential encryption keys"): put a new key FIRST in the
list, keep the old ones after it, restart, run this command; then the old keys
can be removed from the list.
"""

from allauth.mfa.models import Authenticator
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

from mailadmin import secretbox
from mailadmin.accounts import credentials, verify
from mailadmin.portal.models import OwnerSettings


class Command(BaseCommand):
    help = "Re-encrypt stored CRAM-MD5 secrets and TOTP/recovery seeds under the newest credential encryption key."

    def handle(self, *args, **options):
        resealed, unopened = secretbox.reseal_stored_secrets(Authenticator, OwnerSettings)
        self.stdout.write(f"Re-sealed {resealed} TOTP/recovery secret(s).")
        if unopened:
            self.stderr.write(f"{unopened} TOTP/recovery secret(s) could not be decrypted and were left as they are.")
        if not credentials.encryption_available():
            return
        try:
            rotated, unreadable = credentials.rotate_cram_states()
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from None
        verify.clear_caches()
        self.stdout.write(f"Re-encrypted {rotated} CRAM-MD5 secret(s) under the newest key.")
        if unreadable:
            self.stderr.write(
                f"{unreadable} secret(s) could not be decrypted with any configured key and were cleared; "
                "those mailboxes get a new one after their next PLAIN/LOGIN."
            )
