"""Fewer indexes on the audit trail: a scheduling pass appends thousands of events in one COPY and
pays for every index on each row. Dropped: created_at alone (no query filters or orders by it; pages
read by id), team_id alone (the (team, created_at) index serves it) and, on PostgreSQL, the
varchar_pattern_ops copy of the unique hash index (no query matches hashes by prefix; the unique
index stays).
"""

import django.db.models.deletion
import django.utils.timezone
from django.db import migrations, models


def _hash_like_index(schema_editor, model) -> str:
    return schema_editor._create_index_name(model._meta.db_table, ["hash"], suffix="_like")


def _drop_hash_like(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    model = apps.get_model("governance", "AuditEvent")
    schema_editor.execute(f"DROP INDEX IF EXISTS {schema_editor.quote_name(_hash_like_index(schema_editor, model))}")


def _create_hash_like(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    model = apps.get_model("governance", "AuditEvent")
    schema_editor.execute(f"CREATE INDEX IF NOT EXISTS {schema_editor.quote_name(_hash_like_index(schema_editor, model))} "
                          f"ON {schema_editor.quote_name(model._meta.db_table)} (hash varchar_pattern_ops)")


class Migration(migrations.Migration):

    dependencies = [
        ('governance', '0002_audit_append_only'),
    ]

    operations = [
        migrations.AlterField(
            model_name='auditevent',
            name='created_at',
            field=models.DateTimeField(default=django.utils.timezone.now),
        ),
        migrations.AlterField(
            model_name='auditevent',
            name='team',
            field=models.ForeignKey(blank=True, db_constraint=False, db_index=False, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='governance.team'),
        ),
        migrations.RunPython(_drop_hash_like, _create_hash_like),
    ]
