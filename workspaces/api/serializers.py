"""Workspace API shapes: one input and one output serializer per endpoint, inputs strict
(unknown keys and wrong JSON types are 400s, see governance.api.serializers)."""

from rest_framework import serializers

from governance.api.serializers import StrictCharField, StrictInputSerializer, StrictIntegerField
from workspaces.models import Workspace


class StrictNumberField(serializers.FloatField):
    """A JSON number, not "3" nor true."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    def to_internal_value(self, data):
        if not isinstance(data, bool):
            self.fail("invalid", input=data)
        return data


class WorkspaceCreateInput(StrictInputSerializer):
    team = StrictCharField(help_text="Team slug.")
    image = StrictCharField(help_text="Catalogue image name.")
    flavor = StrictCharField(help_text="GPU model (e.g. H100) or, with mig=true, a MIG profile (e.g. 1g.18gb).")
    mig = StrictBooleanField(default=False)
    gpu_count = StrictIntegerField(min_value=1, max_value=64, default=1)
    duration_hours = StrictNumberField(min_value=0.05, max_value=24 * 365, default=8)
    sharing = serializers.ChoiceField(choices=Workspace.Sharing.choices, default=Workspace.Sharing.PRIVATE)
    name = StrictCharField(max_length=80, required=False, allow_blank=True, default="")


class WorkspaceExtendInput(StrictInputSerializer):
    hours = StrictNumberField(min_value=0.1, max_value=24 * 30)


class EmptyInput(StrictInputSerializer):
    reason = StrictCharField(max_length=200, required=False, allow_blank=True, default="")


class PendingReasonOutput(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()


class WorkspaceOutput(serializers.ModelSerializer):
    team = serializers.CharField(source="team.slug")
    owner = serializers.CharField(source="owner.username")
    image = serializers.CharField(source="image.name")
    node = serializers.CharField(source="node.name", default=None)
    flavor = serializers.CharField(source="allocation_request.flavor", default=None)
    mig = serializers.BooleanField(source="allocation_request.mig", default=None)
    gpu_count = serializers.IntegerField(source="allocation_request.count", default=None)
    lab_url = serializers.SerializerMethodField()

    class Meta:
        model = Workspace
        fields = ["id", "name", "team", "owner", "image", "image_digest", "state", "sharing", "node", "flavor", "mig",
                  "gpu_count", "launcher", "planned_duration_s", "planned_end", "error", "stop_reason", "extensions",
                  "created_at", "scheduled_at", "starting_at", "running_at", "stopping_at", "stopped_at", "lab_url"]

    def get_lab_url(self, obj) -> str | None:
        return f"/w/{obj.pk}/lab" if obj.state == Workspace.State.RUNNING else None


class WorkspaceDetailOutput(WorkspaceOutput):
    pending_reasons = serializers.SerializerMethodField()
    queue_position_team = serializers.SerializerMethodField()
    queue_position_global = serializers.SerializerMethodField()
    estimated_start = serializers.SerializerMethodField()
    devices = serializers.SerializerMethodField()
    preempt_at = serializers.SerializerMethodField()

    class Meta(WorkspaceOutput.Meta):
        fields = WorkspaceOutput.Meta.fields + ["pending_reasons", "queue_position_team", "queue_position_global",
                                                "estimated_start", "devices", "preempt_at"]

    def _pending(self, obj):
        request = obj.allocation_request
        return request if request is not None and obj.state == Workspace.State.PENDING else None

    def get_pending_reasons(self, obj) -> list[dict]:
        request = self._pending(obj)
        return list(request.pending_reasons or []) if request else []

    def get_queue_position_team(self, obj) -> int | None:
        request = self._pending(obj)
        return request.queue_position_team if request else None

    def get_queue_position_global(self, obj) -> int | None:
        request = self._pending(obj)
        return request.queue_position_global if request else None

    def get_estimated_start(self, obj) -> str | None:
        request = self._pending(obj)
        return serializers.DateTimeField().to_representation(request.estimated_start) if request and request.estimated_start else None

    def get_devices(self, obj) -> list[dict]:
        return [{"uuid": d.mig_slice.uuid if d.mig_slice_id else d.gpu.uuid,
                 "kind": "mig" if d.mig_slice_id else "gpu",
                 "model": d.mig_slice.profile if d.mig_slice_id else d.gpu.model,
                 "node": d.node.name} for d in self.context.get("devices", [])]

    def get_preempt_at(self, obj) -> str | None:
        at = self.context.get("preempt_at")
        return serializers.DateTimeField().to_representation(at) if at else None
