"""Cheaper allocation writes: a pass inserts thousands of allocations and marks thousands of requests
placed. Allocation.team and Allocation.node lose their database constraints (each was one check per
inserted row at commit; they repeat the request's team and the device's node, whose constraints
stay) and team_id its single-column index (the (team, released_at) index serves it);
AllocationRequest.state loses its single-column indexes (the (state, created_at) index serves every
filter on state; a placement changes state, so it touched every index).
"""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('governance', '0003_audit_fewer_indexes'),
        ('scheduler', '0003_request_fillfactor'),
    ]

    operations = [
        migrations.AlterField(
            model_name='allocation',
            name='node',
            field=models.ForeignKey(db_constraint=False, on_delete=django.db.models.deletion.PROTECT, related_name='allocations', to='scheduler.node'),
        ),
        migrations.AlterField(
            model_name='allocation',
            name='team',
            field=models.ForeignKey(db_constraint=False, db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='allocations', to='governance.team'),
        ),
        migrations.AlterField(
            model_name='allocationrequest',
            name='state',
            field=models.CharField(choices=[('pending', 'Pending'), ('placed', 'Placed'), ('cancelled', 'Cancelled'), ('finished', 'Finished')], default='pending', max_length=10),
        ),
    ]
