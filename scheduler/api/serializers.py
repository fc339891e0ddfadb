"""Input and output shapes of the scheduler API (inventory, queue, reservations): one input and
one output serializer per endpoint; inputs are strict (governance.api.serializers)."""

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from governance.api.serializers import StrictCharField, StrictInputSerializer, StrictIntegerField
from scheduler.inventory import DRAIN_REASON_MAX
from scheduler.models import AllocationRequest, Node


# --- nodes ---

class FlavorCountOutput(serializers.Serializer):
    flavor = serializers.CharField()
    total = serializers.IntegerField()
    used = serializers.IntegerField()
    free = serializers.IntegerField()
    unavailable = serializers.IntegerField(help_text="Unhealthy or vanished devices.")


class NodeOutput(serializers.Serializer):
    """A NodeSummary (scheduler.fleet_selectors) as JSON."""

    name = serializers.CharField(source="node.name")
    state = serializers.ChoiceField(choices=Node.State.choices, source="node.state")
    drain_reason = serializers.CharField(source="node.drain_reason", help_text="Non-empty while an admin's drain is in force.")
    state_changed_at = serializers.DateTimeField(source="node.state_changed_at", allow_null=True)
    last_heartbeat = serializers.DateTimeField(source="node.last_heartbeat", allow_null=True)
    gone_confirmed_at = serializers.DateTimeField(source="node.gone_confirmed_at", allow_null=True)
    simulated = serializers.BooleanField(source="node.simulated")
    labels = serializers.DictField(source="node.labels")
    capacity = serializers.DictField(source="node.capacity")
    gpu_count = serializers.IntegerField()
    devices_in_use = serializers.IntegerField(source="used_count", help_text="GPUs and MIG slices with a live allocation.")
    devices_preempting = serializers.IntegerField(source="preempting")
    gpus = FlavorCountOutput(many=True, source="models", help_text="Whole GPUs per model.")
    mig_slices = FlavorCountOutput(many=True, source="mig", help_text="MIG slices per profile.")


class NodeDrainInput(StrictInputSerializer):
    reason = StrictCharField(max_length=DRAIN_REASON_MAX, required=False, allow_blank=True, default="")


class NodeUndrainInput(StrictInputSerializer):
    pass


class NodeConfirmGoneInput(StrictInputSerializer):
    note = StrictCharField(max_length=200, required=False, allow_blank=True, default="")


class NodeConfirmGoneOutput(serializers.Serializer):
    node = NodeOutput()
    requeued_requests = serializers.ListField(child=serializers.IntegerField(),
                                              help_text="Requests whose devices were released and went back to the queue.")


# --- GPUs ---

class DeviceHolderOutput(serializers.Serializer):
    request = serializers.IntegerField()
    team = serializers.CharField()
    borrowed = serializers.BooleanField()
    preempt_at = serializers.DateTimeField(allow_null=True)
    planned_end = serializers.DateTimeField(allow_null=True)


class MigSliceOutput(serializers.Serializer):
    uuid = serializers.CharField()
    index = serializers.IntegerField()
    profile = serializers.CharField()
    memory_mb = serializers.IntegerField()
    healthy = serializers.BooleanField()
    allocation = serializers.SerializerMethodField()

    @extend_schema_field(DeviceHolderOutput(allow_null=True))
    def get_allocation(self, obj):
        facts = self.context["by_slice"].get(obj.pk)
        return DeviceHolderOutput(facts).data if facts else None


class GpuOutput(serializers.Serializer):
    uuid = serializers.CharField()
    node = serializers.CharField(source="node.name")
    index = serializers.IntegerField()
    model = serializers.CharField()
    memory_mb = serializers.IntegerField()
    serial = serializers.CharField()
    nvlink_group = serializers.CharField()
    mig_enabled = serializers.BooleanField()
    healthy = serializers.BooleanField()
    health_message = serializers.CharField()
    simulated = serializers.BooleanField(source="node.simulated")
    allocation = serializers.SerializerMethodField()
    mig_slices = MigSliceOutput(many=True)

    @extend_schema_field(DeviceHolderOutput(allow_null=True))
    def get_allocation(self, obj):
        facts = self.context["by_gpu"].get(obj.pk)
        return DeviceHolderOutput(facts).data if facts else None


# --- allocation requests ---

class PendingReasonOutput(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()


class AllocationRequestOutput(serializers.Serializer):
    id = serializers.IntegerField()
    team = serializers.CharField(source="team.slug")
    user = serializers.CharField(source="user.username")
    flavor = serializers.CharField()
    mig = serializers.BooleanField()
    count = serializers.IntegerField()
    same_node = serializers.BooleanField()
    nvlink_preferred = serializers.BooleanField()
    priority = serializers.IntegerField()
    priority_label = serializers.CharField(source="get_priority_display")
    preemptible = serializers.BooleanField()
    max_duration_s = serializers.IntegerField()
    state = serializers.ChoiceField(choices=AllocationRequest.State.choices)
    created_at = serializers.DateTimeField()
    placed_at = serializers.DateTimeField(allow_null=True)
    ended_at = serializers.DateTimeField(allow_null=True)
    pending_reasons = PendingReasonOutput(many=True, help_text="Why it waits, most important first (pending requests).")
    queue_position_team = serializers.IntegerField(allow_null=True)
    queue_position_global = serializers.IntegerField(allow_null=True)
    estimated_start = serializers.DateTimeField(allow_null=True)


class AllocationOutput(serializers.Serializer):
    node = serializers.CharField(source="node.name")
    gpu = serializers.SerializerMethodField()
    mig_slice = serializers.CharField(source="mig_slice.uuid", allow_null=True, default=None)
    borrowed = serializers.BooleanField()
    preemptible = serializers.BooleanField()
    started_at = serializers.DateTimeField()
    planned_end = serializers.DateTimeField(allow_null=True)
    preempt_at = serializers.DateTimeField(allow_null=True)
    released_at = serializers.DateTimeField(allow_null=True)
    release_reason = serializers.CharField()

    def get_gpu(self, obj) -> str:
        return obj.gpu.uuid if obj.gpu_id else obj.mig_slice.gpu.uuid


class AllocationRequestDetailOutput(AllocationRequestOutput):
    allocations = AllocationOutput(many=True, source="allocation_rows")


# --- reservations ---

class ReservationOutput(serializers.Serializer):
    id = serializers.IntegerField()
    team = serializers.CharField(source="team.slug")
    flavor = serializers.CharField()
    count = serializers.IntegerField()
    starts_at = serializers.DateTimeField()
    ends_at = serializers.DateTimeField()
    note = serializers.CharField()
    created_by = serializers.CharField(source="created_by.username", allow_null=True, default=None)
    created_at = serializers.DateTimeField()


class ReservationCreateInput(StrictInputSerializer):
    team = StrictCharField(max_length=50, help_text="Team slug.")
    flavor = StrictCharField(max_length=40, help_text='A GPU model ("H100") or, with mig=true, a MIG profile ("1g.18gb").')
    mig = serializers.BooleanField(required=False, default=False)
    count = StrictIntegerField(min_value=1, max_value=4096)
    starts_at = serializers.DateTimeField()
    ends_at = serializers.DateTimeField()
    note = StrictCharField(max_length=200, required=False, allow_blank=True, default="")
