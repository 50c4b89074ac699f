"""Leave free space in the pages of the upserted tables (PostgreSQL only; storage, not schema).

Ingest adds to the same rollup and baseline rows many times a minute. With full
pages every such update writes a new row version on another page plus an entry
in every index; with free space on the page PostgreSQL makes it a HOT update
(no index writes, dead versions pruned in place). Measured with bench/ingest.py:
about half the server CPU of the rollup upserts.
"""

from django.db import migrations

TABLES = ("monitoring_rollup", "monitoring_hourlyrollup", "monitoring_userbaseline")


def set_fillfactor(value):
    def apply(apps, schema_editor):
        if schema_editor.connection.vendor != "postgresql":
            return
        for table in TABLES:
            schema_editor.execute(f"ALTER TABLE {schema_editor.quote_name(table)} SET (fillfactor = {int(value)})")

    return apply


class Migration(migrations.Migration):
    dependencies = [("monitoring", "0003_sent_item")]

    operations = [migrations.RunPython(set_fillfactor(50), set_fillfactor(100))]
