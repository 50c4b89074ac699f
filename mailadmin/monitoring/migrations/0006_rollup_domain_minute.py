from django.db import migrations, models

# The minute "domain" dimension (key = the username's domain, per result): a domain
# admin's short-range timeline reads it instead of the domain's events; ingest fills it
# from now on (mailadmin.monitoring.ingest.rollup_counts). Plain SQL backfill from the
# events: migrations must not depend on today's app code.
BACKFILL = {
    "postgresql": """
        INSERT INTO monitoring_rollup (minute, dimension, key, result, count, domain_name)
        SELECT date_trunc('minute', ts), 'domain', domain_name, result, count(*), domain_name
        FROM monitoring_authevent WHERE domain_name <> '' GROUP BY 1, 3, 4
        ON CONFLICT (dimension, key, minute, result) DO NOTHING
    """,
    "sqlite": """
        INSERT INTO monitoring_rollup (minute, dimension, key, result, count, domain_name)
        SELECT strftime('%Y-%m-%d %H:%M:00', ts), 'domain', domain_name, result, count(*), domain_name
        FROM monitoring_authevent WHERE domain_name <> '' GROUP BY 1, 3, 4
    """,
}


def backfill(apps, schema_editor):
    sql = BACKFILL.get(schema_editor.connection.vendor)
    if sql:
        schema_editor.execute(sql)


class Migration(migrations.Migration):
    dependencies = [("monitoring", "0005_window_totals")]

    operations = [
        migrations.AlterField(
            model_name="rollup",
            name="dimension",
            field=models.CharField(
                choices=[
                    ("all", "All"),
                    ("ip", "Ip"),
                    ("prefix", "Prefix"),
                    ("username", "Username"),
                    ("country", "Country"),
                    ("asn", "Asn"),
                    ("mechanism", "Mechanism"),
                    ("domain", "Domain"),
                ],
                max_length=10,
            ),
        ),
        migrations.RunPython(backfill, migrations.RunPython.noop),
    ]
