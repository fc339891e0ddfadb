"""Leave room on each page of the request table (PostgreSQL only).

Every scheduling pass rewrites the pending reasons, queue positions and estimated start of the
requests whose facts changed: thousands of rows. None of those columns is indexed, so with free
space on the page PostgreSQL updates them in place (HOT) instead of adding an entry to every index
of the table for each row: the pass's queue write gets several times cheaper.
"""

from django.db import migrations


def _fillfactor(value: int):
    def apply(apps, schema_editor):
        if schema_editor.connection.vendor != "postgresql":
            return
        table = apps.get_model("scheduler", "AllocationRequest")._meta.db_table
        schema_editor.execute(f"ALTER TABLE {schema_editor.quote_name(table)} SET (fillfactor = {value})")

    return apply


class Migration(migrations.Migration):
    dependencies = [("scheduler", "0002_node_drain_slice_health")]

    operations = [migrations.RunPython(_fillfactor(70), _fillfactor(100))]
