"""Vacuum the window totals after 2 % of their rows are dead instead of PostgreSQL's 20 %.

Every quarter-hour and hourly fold updates the rows of the keys it folds in and out
(monitoring.windows); at 10 M events that is ~34 k dead rows per 24 h fold (one quarter
hour in, one out), over 3 M a day for that window alone. At the default scale factor (20 %
of ~14 M rows) autovacuum waited for ~2.8 M of them while the table grew; at 2 % it runs
every couple of hours and the space is reused. PostgreSQL only (a storage parameter, not schema).
"""

from django.db import migrations

TABLE = "monitoring_windowtotal"


def set_scale_factor(value):
    def apply(apps, schema_editor):
        if schema_editor.connection.vendor != "postgresql":
            return
        option = (
            "RESET (autovacuum_vacuum_scale_factor)"
            if value is None
            else f"SET (autovacuum_vacuum_scale_factor = {float(value)})"
        )
        schema_editor.execute(f"ALTER TABLE {schema_editor.quote_name(TABLE)} {option}")

    return apply


class Migration(migrations.Migration):
    dependencies = [("monitoring", "0007_event_domain_covering_index")]

    operations = [migrations.RunPython(set_scale_factor(0.02), set_scale_factor(None))]
