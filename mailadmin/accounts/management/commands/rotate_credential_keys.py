"""Re-encrypt every stored CRAM-MD5 state under the newest CREDENTIAL_ENCRYPTION_KEYS key.

Rotation (README "Credential encryption keys"): put a new key FIRST in the
list, keep the old ones after it, restart, run this command; then the old keys
can be removed from the list.
"""

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

from mailadmin.accounts import credentials, verify


class Command(BaseCommand):
    help = "Re-encrypt stored CRAM-MD5 secrets under the newest credential encryption key."

    def handle(self, *args, **options):
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
