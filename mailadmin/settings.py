"""Mailadmin settings: everything that differs between machines comes from the
environment (see README "Configuration"); defaults are safe for development.
"""

import os
from pathlib import Path

from mailadmin.env import (
    cache,
    database,
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_list,
    env_str,
    secret_key,
)

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("VAR_DIR", str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env_bool("DEBUG", False)
SECRET_KEY = secret_key(VAR_DIR, DEBUG)
# Previous keys, still accepted for signatures and sealed secrets while rotating.
SECRET_KEY_FALLBACKS = env_list("SECRET_KEY_FALLBACKS", [])
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
SITE_URL = env_str("SITE_URL", "http://127.0.0.1:8000").rstrip("/")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [SITE_URL])
USE_TLS = SITE_URL.startswith("https://")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "allauth",
    "allauth.account",
    "allauth.mfa",
    "mailadmin.staff",
    "mailadmin.accounts",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    "mailadmin.staff.middleware.RequireMFAMiddleware",
]

ROOT_URLCONF = "mailadmin.urls"
WSGI_APPLICATION = "mailadmin.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": database(env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}"))}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # The events' covering index (INCLUDE columns) is a PostgreSQL speed-up; SQLite
    # builds it without them, which is fine for a development database.
    SILENCED_SYSTEM_CHECKS = ["models.W040"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
CACHE_URL = env_str("CACHE_URL")
CACHES = {"default": cache(CACHE_URL, VAR_DIR)}

AUTH_USER_MODEL = "staff.User"
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
LOGIN_URL = "account_login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "account_login"

# Staff passwords (web logins) keep Django's strong default Argon2 parameters;
# SMTP credentials use the cheaper, tunable hasher in mailadmin.accounts.
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "mailadmin.accounts.hashers.SMTPArgon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# --- SMTP credential hashing (see README "Password hashing cost") ---
SMTP_ARGON2_TIME_COST = env_int("SMTP_ARGON2_TIME_COST", 2, minimum=1)
SMTP_ARGON2_MEMORY_COST = env_int("SMTP_ARGON2_MEMORY_COST", 19456, minimum=7168)  # KiB
SMTP_ARGON2_PARALLELISM = env_int("SMTP_ARGON2_PARALLELISM", 1, minimum=1)
VERIFY_CONCURRENCY = env_int("VERIFY_CONCURRENCY", os.cpu_count() or 2, minimum=1)
# Key for CRAM-MD5 secrets at rest: a comma-separated list of Fernet keys,
# newest first (rotation: prepend a new key, run `manage.py rotate_credential_keys`).
CREDENTIAL_ENCRYPTION_KEYS = env_list("CREDENTIAL_ENCRYPTION_KEYS", [])

# --- allauth: staff login with mandatory MFA, no public sign-up ---
ACCOUNT_ADAPTER = "mailadmin.staff.adapters.StaffAccountAdapter"
MFA_ADAPTER = "mailadmin.staff.adapters.StaffMFAAdapter"
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*"]
ACCOUNT_USER_MODEL_USERNAME_FIELD = None
ACCOUNT_EMAIL_VERIFICATION = "none"
ACCOUNT_UNIQUE_EMAIL = True
ACCOUNT_LOGOUT_ON_PASSWORD_CHANGE = False
ACCOUNT_RATE_LIMITS = {
    "login_failed": "10/m/ip,5/5m/key",
    "reset_password": "20/m/ip,5/m/key",
    "change_password": "5/m/user",
}
MFA_SUPPORTED_TYPES = ["totp", "webauthn", "recovery_codes"]
MFA_TOTP_ISSUER = env_str("MFA_TOTP_ISSUER", "Mailadmin")
# Accept the code of the previous and next 30 s step too (RFC 6238 section 5.2):
# a code typed as its step ends, or a phone clock a few seconds off, would
# otherwise be refused. Codes stay single-use (allauth and the portal remember
# used codes for longer than the three steps).
MFA_TOTP_TOLERANCE = 1
MFA_WEBAUTHN_ALLOW_INSECURE_ORIGIN = DEBUG
MFA_PASSKEY_LOGIN_ENABLED = False

# --- security ---
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_AGE = env_int("SESSION_COOKIE_AGE", 8 * 3600, minimum=300)
SESSION_COOKIE_SECURE = USE_TLS
CSRF_COOKIE_SECURE = USE_TLS
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("BEHIND_PROXY", False) else None
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000 if USE_TLS else 0, minimum=0)

# --- email (alert mail) ---
EMAIL_HOST = env_str("EMAIL_HOST", "")
EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1, maximum=65535)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)
EMAIL_TIMEOUT = 30
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "Mailadmin <mailadmin@localhost>")
SERVER_EMAIL = DEFAULT_FROM_EMAIL
if EMAIL_HOST:
    EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
else:
    # No mail server configured: alert mail lands in var/outbox as .log files.
    EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
    EMAIL_FILE_PATH = str(VAR_DIR / "outbox")

# --- Celery ---
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "filesystem://")
if CELERY_BROKER_URL.startswith("filesystem://"):
    _broker_dir = VAR_DIR / "broker"
    (_broker_dir / "queue").mkdir(parents=True, exist_ok=True)
    (_broker_dir / "processed").mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        # Broadcast exchanges (worker control); default would be ./control in the checkout.
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
    }
elif not CELERY_BROKER_URL.startswith(("redis://", "rediss://", "amqp://")):
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured("CELERY_BROKER_URL must be a redis://, rediss://, amqp:// or filesystem:// URL")
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
# One message reserved per pool process (Celery's advice for long, acks_late tasks): the
# ingest batches waiting in the broker are then still there for a busy ingest task to take
# with its own (monitoring.tasks.COALESCE_MAX_EVENTS). With 4, eight batches of 500 sat
# reserved in the worker's main process and each ran as a task of its own: the per-batch cost
# (baselines, detector queries, commit) paid for 500 events instead of 5,000.
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_DEFAULT_QUEUE = "default"
# Celery's Django fixup closes the database connection before and after every task unless
# this is set: a new PostgreSQL session (fork, auth, cold catalog caches) per ingest batch.
# mailadmin/celery.py applies Django's own rule instead (CONN_MAX_AGE, drop broken connections).
CELERY_DB_REUSE_MAX = 1_000_000
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")

# --- i18n, static ---
LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True
STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(VAR_DIR / "staticfiles")))
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if env_bool("STATIC_MANIFEST", False)
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}
WHITENOISE_USE_FINDERS = env_bool("WHITENOISE_USE_FINDERS", True)

LOG_LEVEL = env_choice("LOG_LEVEL", "INFO", {"DEBUG", "INFO", "WARNING", "ERROR"})
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# --- accounts (mailboxes, credentials; README "Mailboxes and credentials") ---
SCRAM_ITERATIONS = env_int("SCRAM_ITERATIONS", 4096, minimum=4096)
# Recent successful SMTP verifications kept in memory (see accounts/verify.py).
VERIFY_CACHE_SIZE = env_int("VERIFY_CACHE_SIZE", 10000, minimum=0)
VERIFY_CACHE_TTL = env_int("VERIFY_CACHE_TTL", 900, minimum=0)
# PostgreSQL only: smtpd workers LISTEN for credential changes and answer repeated
# successes from memory (accounts/verify_cache.py); ignored on SQLite.
VERIFY_CACHE_LISTEN = env_bool("VERIFY_CACHE_LISTEN", True)
MAILBOX_CSV_MAX_BYTES = env_int("MAILBOX_CSV_MAX_BYTES", 5 * 1024 * 1024, minimum=1024)
PASSWORD_EXPIRY_NOTICE_DAYS = env_int("PASSWORD_EXPIRY_NOTICE_DAYS", 7, minimum=1)
if not CREDENTIAL_ENCRYPTION_KEYS and DEBUG:
    from mailadmin.accounts.keys import development_key

    CREDENTIAL_ENCRYPTION_KEYS = [development_key(VAR_DIR)]
# Other apps add their own entries the same way, so merges never conflict.
CELERY_BEAT_SCHEDULE = {
    **globals().get("CELERY_BEAT_SCHEDULE", {}),
    "accounts-notify-expiring-passwords": {"task": "accounts.notify_expiring_passwords", "schedule": 6 * 3600},
}

# --- oauth: OAuth2 provider for SMTP (XOAUTH2 / OAUTHBEARER) and the mailbox-owner portal ---
# (see README "OAuth2 for SMTP and the owner portal")
INSTALLED_APPS += ["oauth2_provider", "mailadmin.oauth", "mailadmin.portal"]
OAUTH_ENABLED = env_bool("OAUTH_ENABLED", True)
OAUTH_ACCESS_TOKEN_SECONDS = env_int("OAUTH_ACCESS_TOKEN_SECONDS", 3600, minimum=60, maximum=86400)
OAUTH_REFRESH_TOKEN_SECONDS = env_int("OAUTH_REFRESH_TOKEN_SECONDS", 90 * 86400, minimum=3600)
# RFC 8707 resource indicator of the SMTP service: a token bound to other resources is refused.
OAUTH_SMTP_RESOURCE = env_str("OAUTH_SMTP_RESOURCE", f"{SITE_URL}/smtp")
# RFC 8414 metadata, named in the OAUTHBEARER error challenge (RFC 7628 "openid-configuration").
OAUTH_DISCOVERY_URL = f"{SITE_URL}/.well-known/oauth-authorization-server"
# The resource owner is a mailbox: DOT's models are swapped (first migration of mailadmin.oauth).
OAUTH2_PROVIDER_APPLICATION_MODEL = "oauth.Application"
OAUTH2_PROVIDER_ACCESS_TOKEN_MODEL = "oauth.AccessToken"
OAUTH2_PROVIDER_REFRESH_TOKEN_MODEL = "oauth.RefreshToken"
OAUTH2_PROVIDER_GRANT_MODEL = "oauth.Grant"
OAUTH2_PROVIDER_ID_TOKEN_MODEL = "oauth.IDToken"
OAUTH2_PROVIDER = {
    "SCOPES": {"smtp": "Send mail as this mailbox (SMTP AUTH)"},
    "DEFAULT_SCOPES": ["smtp"],
    "ACCESS_TOKEN_EXPIRE_SECONDS": OAUTH_ACCESS_TOKEN_SECONDS,
    "REFRESH_TOKEN_EXPIRE_SECONDS": OAUTH_REFRESH_TOKEN_SECONDS,
    "ROTATE_REFRESH_TOKEN": True,
    "REFRESH_TOKEN_REUSE_PROTECTION": True,
    "AUTHORIZATION_CODE_EXPIRE_SECONDS": 60,
    "OAUTH2_VALIDATOR_CLASS": "mailadmin.oauth.validators.MailboxOAuth2Validator",
    # Client secrets are long random strings: the cheap SMTP Argon2 parameters suffice.
    "CLIENT_SECRET_HASHER": "argon2smtp",
    # Only SHA-256 checksums of access and refresh tokens are stored.
    "COMPLIANT_BCP_RFC9700_TOKEN_STORAGE": True,
    "COMPLIANT_BCP_RFC9700_PKCE_METHOD": True,
    "COMPLIANT_BCP_RFC9700_IMPLICIT_GRANT": True,
    "COMPLIANT_BCP_RFC9700_PASSWORD_GRANT": True,
}
# oauthlib's DEBUG messages quote refresh tokens and codes: never below INFO.
LOGGING["loggers"]["oauthlib"] = {"level": "INFO"}
# Owner portal sign-in throttle (Django cache): attempts per window per client IP and per address.
PORTAL_LOGIN_LIMIT_PER_IP = env_int("PORTAL_LOGIN_LIMIT_PER_IP", 20, minimum=1)
PORTAL_LOGIN_LIMIT_PER_ADDRESS = env_int("PORTAL_LOGIN_LIMIT_PER_ADDRESS", 5, minimum=1)
PORTAL_LOGIN_WINDOW_SECONDS = env_int("PORTAL_LOGIN_WINDOW_SECONDS", 300, minimum=10)

# --- monitoring ---
INSTALLED_APPS += ["mailadmin.monitoring"]
MONITORING_PREFIX_V4 = env_int("MONITORING_PREFIX_V4", 24, minimum=8, maximum=32)
MONITORING_PREFIX_V6 = env_int("MONITORING_PREFIX_V6", 64, minimum=16, maximum=128)
MONITORING_EVENT_RETENTION_DAYS = env_int("MONITORING_EVENT_RETENTION_DAYS", 90, minimum=1)
MONITORING_ALERT_MAILS_PER_HOUR = env_int("MONITORING_ALERT_MAILS_PER_HOUR", 20, minimum=1)
MONITORING_OWNER_NOTICES = env_bool("MONITORING_OWNER_NOTICES", False)
CELERY_TASK_ROUTES = {
    "monitoring.ingest_auth_events": {"queue": "ingest"},
    "monitoring.record_messages_sent": {"queue": "ingest"},
    "monitoring.run_scheduled_detectors": {"queue": "ingest"},
    "monitoring.prune_events": {"queue": "ingest"},
    "monitoring.advance_windows": {"queue": "ingest"},
    "monitoring.send_alert_email": {"queue": "alerts"},
    "monitoring.send_alert_emails": {"queue": "alerts"},
    "monitoring.send_digests": {"queue": "alerts"},
    "monitoring.send_owner_notice": {"queue": "alerts"},
}
CELERY_BEAT_SCHEDULE = {
    **globals().get("CELERY_BEAT_SCHEDULE", {}),
    "monitoring-scheduled-detectors": {"task": "monitoring.run_scheduled_detectors", "schedule": 60.0},
    "monitoring-hourly-digest": {"task": "monitoring.send_digests", "schedule": 3600.0, "args": ["hourly"]},
    "monitoring-daily-digest": {"task": "monitoring.send_digests", "schedule": 86400.0, "args": ["daily"]},
    "monitoring-prune-events": {"task": "monitoring.prune_events", "schedule": 3600.0},
    # The overview's 24 h / 7 d / 30 d window totals (mailadmin.monitoring.windows).
    "monitoring-advance-windows": {"task": "monitoring.advance_windows", "schedule": 60.0},
}

# --- smtpd (the SMTP submission server; see README "SMTP submission server") ---
INSTALLED_APPS += ["smtpd"]  # only for `manage.py runsmtpd`; smtpd has no models
SMTPD_LISTEN = env_list("SMTPD_LISTEN", ["127.0.0.1:1587", "[::1]:1587"] if DEBUG else ["0.0.0.0:587", "[::]:587"])
SMTPD_TLS_LISTEN = env_list(
    "SMTPD_TLS_LISTEN", ["127.0.0.1:1465", "[::1]:1465"] if DEBUG else ["0.0.0.0:465", "[::]:465"]
)
SMTPD_TLS_CERT = env_str("SMTPD_TLS_CERT", "")  # empty: self-signed pair generated into var/ (DEBUG only)
SMTPD_TLS_KEY = env_str("SMTPD_TLS_KEY", "")
SMTPD_HOSTNAME = env_str("SMTPD_HOSTNAME", "localhost" if DEBUG else "")  # empty: the machine's FQDN
SMTPD_NODE_NAME = env_str("SMTPD_NODE_NAME", "")  # empty: the host name
SMTPD_PROXY_NETWORKS = env_list("SMTPD_PROXY_NETWORKS", [])
SMTPD_AUTH_FAIL_DELAY = env_float("SMTPD_AUTH_FAIL_DELAY", 1.0, minimum=0.0)  # seconds, +/- 25% jitter
SMTPD_MAX_AUTH_FAILURES = env_int("SMTPD_MAX_AUTH_FAILURES", 3, minimum=1)
SMTPD_AUTH_RATE_PER_IP = env_int("SMTPD_AUTH_RATE_PER_IP", 60, minimum=1)  # AUTH commands per minute per worker
SMTPD_MAX_MESSAGE_SIZE = env_int("SMTPD_MAX_MESSAGE_SIZE", 25 * 1024 * 1024, minimum=1024)
SMTPD_MAX_RECIPIENTS = env_int("SMTPD_MAX_RECIPIENTS", 100, minimum=1)
SMTPD_SESSION_TIMEOUT = env_int("SMTPD_SESSION_TIMEOUT", 300, minimum=5)
SMTPD_DRAIN_TIMEOUT = env_int("SMTPD_DRAIN_TIMEOUT", 30, minimum=0)
# Threads waiting for an Argon2 slot (VERIFY_CONCURRENCY) must not hold up cached
# successes queued behind them, so the pool is much larger than the Argon2 bound.
# Each thread may hold one database connection: size PostgreSQL max_connections.
SMTPD_THREADS = env_int("SMTPD_THREADS", 32, minimum=1)
# Argon2 threads of the smtpd run this much nicer than the rest of the process, so
# failures and first logins never slow the event loop or cached logins (0: off).
SMTPD_ARGON2_NICE = env_int("SMTPD_ARGON2_NICE", 10, minimum=0)
SMTPD_WORKERS = env_int("SMTPD_WORKERS", 1, minimum=1)
SMTPD_METRICS_LISTEN = env_str("SMTPD_METRICS_LISTEN", "127.0.0.1:9587" if DEBUG else "")
SMTPD_SPOOL_DIR = env_str("SMTPD_SPOOL_DIR", str(VAR_DIR / "smtpd-spool"))
SMTPD_MAILDIR = env_str("SMTPD_MAILDIR", str(VAR_DIR / "maildir"))
RELAY_URL = env_str("RELAY_URL", "")  # smtp://user:pass@host:587 (STARTTLS) or smtps://...:465; empty: Maildir

# --- hardening: CSP, cookies, staff sessions, re-authentication (README "Security") ---
# django-csp sets the header; no page needs inline scripts or style attributes
# (allauth passes its data in <script type="application/json">, which CSP allows).
MIDDLEWARE.insert(MIDDLEWARE.index("django.middleware.security.SecurityMiddleware") + 1, "csp.middleware.CSPMiddleware")
MIDDLEWARE.insert(
    MIDDLEWARE.index("django.middleware.common.CommonMiddleware") + 1, "mailadmin.security.RejectNulBytesMiddleware"
)
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],  # allauth's TOTP QR code is a data: URI
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "frame-ancestors": ["'none'"],
        "form-action": ["'self'"],
    }
}
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
CSRF_COOKIE_HTTPONLY = True  # no script reads it: forms and htmx send the token from the page
CSRF_COOKIE_SAMESITE = "Lax"
# Staff sessions end SESSION_COOKIE_AGE seconds after sign-in (absolute) and, unless
# turned off, when the browser closes.
SESSION_EXPIRE_AT_BROWSER_CLOSE = env_bool("SESSION_EXPIRE_AT_BROWSER_CLOSE", True)
# Sensitive actions (staff roles, CRAM-MD5, OAuth client secrets) ask for the password
# or a second factor again unless one was re-entered within this many seconds.
ACCOUNT_REAUTHENTICATION_TIMEOUT = env_int("REAUTHENTICATION_TIMEOUT", 300, minimum=30)
