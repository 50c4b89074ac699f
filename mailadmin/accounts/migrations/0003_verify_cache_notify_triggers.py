"""PostgreSQL only: every change that can alter a credential check sends a NOTIFY
on the `accounts_verify` channel, so the smtpd's verification caches
(mailadmin/accounts/verify_cache.py) drop what it affects when it commits.

Payloads: "mailbox:<id>" (a mailbox row, or one of its app passwords, changed),
"domain:<id>", "policy:<domain id or empty>", "all" (a table was truncated).
UPDATEs that only touch bookkeeping columns (last login / last use, expiry
notice, `updated`) send nothing: the smtpd writes those itself after logins.
SQLite has no LISTEN/NOTIFY; there the verifier reads the database on every attempt.
"""

from django.db import migrations

CHANNEL = "accounts_verify"

FUNCTION = f"""
CREATE OR REPLACE FUNCTION accounts_verify_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    -- TG_ARGV: payload kind, the column whose value follows it, then columns to ignore.
    kind text := TG_ARGV[0];
    key_column text := TG_ARGV[1];
    ignored text[] := TG_ARGV[2:];
    old_row jsonb;
    new_row jsonb;
BEGIN
    IF TG_LEVEL = 'STATEMENT' THEN
        PERFORM pg_notify('{CHANNEL}', 'all');
        RETURN NULL;
    END IF;
    IF TG_OP <> 'INSERT' THEN
        old_row := to_jsonb(OLD) - ignored;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        new_row := to_jsonb(NEW) - ignored;
    END IF;
    IF old_row IS NOT DISTINCT FROM new_row THEN
        RETURN NULL;
    END IF;
    IF old_row IS NOT NULL THEN
        PERFORM pg_notify('{CHANNEL}', kind || ':' || COALESCE(old_row ->> key_column, ''));
    END IF;
    IF new_row IS NOT NULL AND (old_row IS NULL OR (new_row ->> key_column) IS DISTINCT FROM (old_row ->> key_column)) THEN
        PERFORM pg_notify('{CHANNEL}', kind || ':' || COALESCE(new_row ->> key_column, ''));
    END IF;
    RETURN NULL;
END
$$;
"""

# (table, payload kind, key column, bookkeeping columns whose changes say nothing about a credential)
TABLES = [
    ("accounts_domain", "domain", "id", ["updated"]),
    (
        "accounts_mailbox",
        "mailbox",
        "id",
        ["last_login_at", "last_login_ip", "last_login_mechanism", "expiry_notice_sent_at", "updated"],
    ),
    ("accounts_apppassword", "mailbox", "mailbox_id", ["last_used_at", "last_used_ip", "last_used_mechanism"]),
    ("accounts_passwordpolicy", "policy", "domain_id", ["updated"]),
]


def _create(table, kind, key, ignored):
    args = ", ".join(f"'{value}'" for value in [kind, key, *ignored])
    return (
        f"CREATE TRIGGER {table}_verify_notify AFTER INSERT OR UPDATE OR DELETE ON {table} "
        f"FOR EACH ROW EXECUTE FUNCTION accounts_verify_notify({args});\n"
        f"CREATE TRIGGER {table}_verify_notify_truncate AFTER TRUNCATE ON {table} "
        f"FOR EACH STATEMENT EXECUTE FUNCTION accounts_verify_notify({args});\n"
    )


def _drop(table):
    return (
        f"DROP TRIGGER IF EXISTS {table}_verify_notify ON {table};\n"
        f"DROP TRIGGER IF EXISTS {table}_verify_notify_truncate ON {table};\n"
    )


FORWARD = FUNCTION + "".join(_create(*table) for table in TABLES)
BACKWARD = "".join(_drop(table[0]) for table in TABLES) + "DROP FUNCTION IF EXISTS accounts_verify_notify();\n"


class PostgreSQLOnly(migrations.RunSQL):
    """RunSQL that does nothing on other databases (SQLite has no triggers of this kind)."""

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            super().database_forwards(app_label, schema_editor, from_state, to_state)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            super().database_backwards(app_label, schema_editor, from_state, to_state)


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0002_mailboxes_aliases_app_passwords_policy"),
    ]

    operations = [PostgreSQLOnly(FORWARD, BACKWARD)]
