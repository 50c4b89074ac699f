"""Argon2id for SMTP credentials with parameters from settings.

SMTP clients authenticate far more often than people log in to web pages, so
the cost is a setting (README "Password hashing cost"); Django's own
Argon2PasswordHasher with its defaults stays in use for staff passwords.
Changing the settings makes must_update() true for older hashes, which the
verifier then re-hashes after the next successful login.
"""

from django.conf import settings
from django.contrib.auth.hashers import Argon2PasswordHasher


class SMTPArgon2PasswordHasher(Argon2PasswordHasher):
    algorithm = "argon2smtp"

    @property
    def time_cost(self):
        return settings.SMTP_ARGON2_TIME_COST

    @property
    def memory_cost(self):
        return settings.SMTP_ARGON2_MEMORY_COST

    @property
    def parallelism(self):
        return settings.SMTP_ARGON2_PARALLELISM
