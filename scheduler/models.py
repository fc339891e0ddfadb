from django.db import models
from django.db.models import Q
from django.utils import timezone

from governance.models import Team, User


class Node(models.Model):
    """A GPU host. Its agent (a Celery worker on queue `node.<name>`) registers it and beats."""

    class State(models.TextChoices):
        READY = "ready"
        DRAINING = "draining"
        DOWN = "down"

    name = models.CharField(max_length=100, unique=True)
    labels = models.JSONField(default=dict, blank=True)
    state = models.CharField(max_length=10, choices=State.choices, default=State.READY)
    last_heartbeat = models.DateTimeField(null=True, blank=True)
    capacity = models.JSONField(default=dict, blank=True, help_text="Free-form: cpu, memory_gb, ...")
    simulated = models.BooleanField(default=False)
    gone_confirmed_at = models.DateTimeField(null=True, blank=True, help_text="A platform admin confirmed a down node is gone.")
    # An admin's drain outlives an outage: a drained node that goes down comes back draining.
    drain_reason = models.CharField(max_length=200, blank=True, help_text="Non-empty while an admin's drain is in force.")
    state_changed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


class GpuDevice(models.Model):
    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="gpus")
    uuid = models.CharField(max_length=64, unique=True)
    index = models.PositiveIntegerField()
    model = models.CharField(max_length=40, help_text="Flavor name: H100, H200, A100 ...")
    memory_mb = models.PositiveIntegerField()
    serial = models.CharField(max_length=64, blank=True)
    nvlink_group = models.CharField(max_length=40, blank=True, help_text="GPUs sharing a group are NVLink-connected.")
    mig_enabled = models.BooleanField(default=False)
    healthy = models.BooleanField(default=True)
    health_message = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["node__name", "index"]
        constraints = [models.UniqueConstraint(fields=["node", "index"], name="gpu_node_index_unique")]

    def __str__(self):
        return f"{self.node.name}/gpu{self.index} ({self.model})"


class MigSlice(models.Model):
    gpu = models.ForeignKey(GpuDevice, on_delete=models.CASCADE, related_name="mig_slices")
    uuid = models.CharField(max_length=80, unique=True)
    profile = models.CharField(max_length=20, help_text="1g.18gb, 3g.71gb ...")
    index = models.PositiveIntegerField()
    memory_mb = models.PositiveIntegerField()
    # False once the slice vanished from its GPU's MIG layout; the row stays while allocations reference it.
    healthy = models.BooleanField(default=True)

    class Meta:
        ordering = ["gpu_id", "index"]

    def __str__(self):
        return f"{self.gpu}/mig{self.index} ({self.profile})"


class PriorityClass(models.IntegerChoices):
    BEST_EFFORT = 0, "best-effort (low)"
    BATCH = 50, "batch (normal)"
    INTERACTIVE = 100, "interactive (high)"


class AllocationRequest(models.Model):
    """A wish for GPUs: N whole GPUs of a model, or N MIG slices of a profile."""

    class State(models.TextChoices):
        PENDING = "pending"
        PLACED = "placed"
        CANCELLED = "cancelled"
        FINISHED = "finished"

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="allocation_requests")
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="allocation_requests")
    flavor = models.CharField(max_length=40, help_text="GPU model (whole GPUs) or MIG profile (slices).")
    mig = models.BooleanField(default=False, help_text="True: `count` MIG slices of profile `flavor`.")
    count = models.PositiveIntegerField(default=1)
    same_node = models.BooleanField(default=True)
    nvlink_preferred = models.BooleanField(default=True)
    priority = models.IntegerField(choices=PriorityClass.choices, default=PriorityClass.INTERACTIVE)
    preemptible = models.BooleanField(default=False)
    max_duration_s = models.PositiveIntegerField(default=8 * 3600)
    # Not indexed alone: the (state, created_at) index below serves every filter on state, and a
    # placement changes state (a non-HOT update), so each index on it costs every pass.
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING)
    created_at = models.DateTimeField(default=timezone.now)
    placed_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    # Why it waits, refreshed by every scheduling pass: [{"code", "message"}], most important first.
    pending_reasons = models.JSONField(default=list, blank=True)
    queue_position_team = models.PositiveIntegerField(null=True, blank=True)
    queue_position_global = models.PositiveIntegerField(null=True, blank=True)
    estimated_start = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["state", "created_at"])]

    def __str__(self):
        kind = "MIG " if self.mig else ""
        return f"#{self.pk} {self.team}: {self.count}x {kind}{self.flavor} ({self.state})"


class Allocation(models.Model):
    """One device (whole GPU or MIG slice) given to one request. Live while released_at is null.

    The partial unique indexes below make a second live allocation of the same device impossible,
    whatever the code does."""

    request = models.ForeignKey(AllocationRequest, on_delete=models.CASCADE, related_name="allocations")
    # Only the request is tied by a database constraint. team and node repeat the request's team and
    # the device's node (for the queries that group by them); gpu and mig_slice name inventory rows,
    # which are never deleted (a vanished device is marked unhealthy, a gone node's rows stay).
    # A pass inserts thousands of rows at once and each constraint costs a check per row at commit:
    # the device's checks also lock every device row they name (FOR KEY SHARE), about half of a
    # large pass's commit. on_delete still applies (Django's collector: PROTECT refuses to delete a
    # device or node that has allocations). The (team, released_at) index serves lookups by team.
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="allocations", db_index=False, db_constraint=False)
    node = models.ForeignKey(Node, on_delete=models.PROTECT, related_name="allocations", db_constraint=False)
    gpu = models.ForeignKey(GpuDevice, null=True, blank=True, on_delete=models.PROTECT, related_name="allocations",
                            db_constraint=False)
    # Indexed only where set (below): nearly every allocation is of a whole GPU.
    mig_slice = models.ForeignKey(MigSlice, null=True, blank=True, on_delete=models.PROTECT, related_name="allocations",
                                  db_constraint=False, db_index=False)
    borrowed = models.BooleanField(default=False, help_text="Beyond the team's grants: always preemptible.")
    preemptible = models.BooleanField(default=False)
    started_at = models.DateTimeField(default=timezone.now)
    planned_end = models.DateTimeField(null=True, blank=True)
    preempt_at = models.DateTimeField(null=True, blank=True, help_text="Chosen as a preemption victim: stopped at this time.")
    released_at = models.DateTimeField(null=True, blank=True, db_index=True)
    release_reason = models.CharField(max_length=200, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["gpu"], condition=Q(released_at__isnull=True, gpu__isnull=False), name="alloc_one_live_per_gpu"),
            models.UniqueConstraint(fields=["mig_slice"], condition=Q(released_at__isnull=True, mig_slice__isnull=False), name="alloc_one_live_per_slice"),
            models.CheckConstraint(
                condition=(Q(gpu__isnull=False, mig_slice__isnull=True) | Q(gpu__isnull=True, mig_slice__isnull=False)),
                name="alloc_exactly_one_device",
            ),
        ]
        indexes = [models.Index(fields=["team", "released_at"]),
                   models.Index(fields=["mig_slice"], condition=Q(mig_slice__isnull=False), name="alloc_mig_slice_set")]

    def __str__(self):
        return f"{self.request_id} on {self.gpu or self.mig_slice}"


class Reservation(models.Model):
    """N GPUs of a flavor kept free for a team during a window (advance reservation)."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="reservations")
    flavor = models.CharField(max_length=40)
    count = models.PositiveIntegerField()
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField()
    created_by = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    note = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["starts_at"]


class UsageLedger(models.Model):
    """GPU-seconds used per team and flavor, the input of fair share (decayed by a half-life)."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="+")
    flavor = models.CharField(max_length=40)
    gpu_seconds = models.FloatField(default=0)
    decayed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["team", "flavor"], name="usage_team_flavor_unique")]


# --- Telemetry ---------------------------------------------------------------------------------


class GpuSample(models.Model):
    """One raw sample of one GPU (or MIG slice), kept for a short window then rolled up.
    Written in batches, one insert per node per interval."""

    gpu = models.ForeignKey(GpuDevice, on_delete=models.CASCADE, related_name="samples", db_constraint=False)
    slice_index = models.SmallIntegerField(default=-1, help_text="MIG slice index on the GPU; -1 for the whole GPU.")
    ts = models.DateTimeField()
    util_gpu = models.FloatField(help_text="0..1")
    util_mem = models.FloatField(help_text="0..1")
    mem_used_bytes = models.BigIntegerField()
    mem_total_bytes = models.BigIntegerField()
    power_w = models.FloatField(null=True)
    power_limit_w = models.FloatField(null=True)
    temp_c = models.FloatField(null=True)
    sm_clock_mhz = models.FloatField(null=True)
    ecc_errors = models.BigIntegerField(null=True)

    class Meta:
        indexes = [models.Index(fields=["gpu", "ts"]), models.Index(fields=["ts"])]


class GpuRollup(models.Model):
    """min/mean/max of a GPU's samples over a bucket of `resolution_s` seconds (60 or 3600)."""

    gpu = models.ForeignKey(GpuDevice, on_delete=models.CASCADE, related_name="rollups", db_constraint=False)
    slice_index = models.SmallIntegerField(default=-1)
    resolution_s = models.PositiveIntegerField()
    bucket = models.DateTimeField()
    samples = models.PositiveIntegerField()
    util_gpu_min = models.FloatField()
    util_gpu_mean = models.FloatField()
    util_gpu_max = models.FloatField()
    mem_used_min = models.BigIntegerField()
    mem_used_mean = models.FloatField()
    mem_used_max = models.BigIntegerField()
    power_mean = models.FloatField(null=True)
    power_max = models.FloatField(null=True)
    temp_mean = models.FloatField(null=True)
    temp_max = models.FloatField(null=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["gpu", "slice_index", "resolution_s", "bucket"], name="rollup_unique_bucket"),
        ]
        indexes = [models.Index(fields=["resolution_s", "gpu", "bucket"])]


class GpuHealthEvent(models.Model):
    """An NVML error or health change (fallen off the bus, XID, driver mismatch): reported, not a crash."""

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="health_events")
    gpu = models.ForeignKey(GpuDevice, null=True, blank=True, on_delete=models.CASCADE, related_name="health_events")
    ts = models.DateTimeField(default=timezone.now, db_index=True)
    kind = models.CharField(max_length=40)
    message = models.CharField(max_length=500)

    class Meta:
        ordering = ["-ts"]
