"""Seal TOTP and recovery-code seeds stored in clear before mailadmin.secretbox existed:
the owners' portal TOTP secrets and the staff's allauth authenticators."""

from django.db import migrations, models

from mailadmin import secretbox


def seal_existing(apps, schema_editor):
    secretbox.reseal_stored_secrets(apps.get_model("mfa", "Authenticator"), apps.get_model("portal", "OwnerSettings"))


class Migration(migrations.Migration):
    dependencies = [
        ("portal", "0001_owner_settings"),
        ("mfa", "0003_authenticator_type_uniq"),
    ]

    operations = [
        migrations.AlterField(
            model_name="ownersettings",
            name="totp_secret",
            field=models.CharField(blank=True, max_length=255),
        ),
        # Not reversible into clear text on purpose: going back leaves the values sealed.
        migrations.RunPython(seal_existing, migrations.RunPython.noop),
    ]
