from django.db import models
from django.utils import timezone

from governance.models import Team, User
from scheduler.models import AllocationRequest, Node


class Image(models.Model):
    """A catalogue entry: what users may launch. Recorded by digest when the launcher resolves it."""

    name = models.CharField(max_length=80, unique=True, help_text="Short catalogue name, used in team policies.")
    reference = models.CharField(max_length=300, help_text="Container image reference (Docker launcher).")
    digest = models.CharField(max_length=100, blank=True)
    description = models.CharField(max_length=300, blank=True)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


class Workspace(models.Model):
    """A JupyterLab a user runs on allocated GPUs.

    pending -> scheduled -> starting -> running -> stopping -> stopped, plus failed and culled;
    every transition is one service in workspaces.services that locks the row and audits."""

    class State(models.TextChoices):
        PENDING = "pending"
        SCHEDULED = "scheduled"
        STARTING = "starting"
        RUNNING = "running"
        STOPPING = "stopping"
        STOPPED = "stopped"
        FAILED = "failed"
        CULLED = "culled"

    class Sharing(models.TextChoices):
        PRIVATE = "private"
        TEAM = "team"

    LIVE_STATES = (State.PENDING, State.SCHEDULED, State.STARTING, State.RUNNING, State.STOPPING)

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="workspaces")
    owner = models.ForeignKey(User, on_delete=models.CASCADE, related_name="workspaces")
    name = models.CharField(max_length=80)
    image = models.ForeignKey(Image, on_delete=models.PROTECT, related_name="workspaces")
    image_digest = models.CharField(max_length=100, blank=True, help_text="What actually ran.")
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING, db_index=True)
    sharing = models.CharField(max_length=10, choices=Sharing.choices, default=Sharing.PRIVATE)
    allocation_request = models.OneToOneField(AllocationRequest, null=True, blank=True, on_delete=models.SET_NULL, related_name="workspace")
    node = models.ForeignKey(Node, null=True, blank=True, on_delete=models.SET_NULL, related_name="workspaces")
    launcher = models.CharField(max_length=20, blank=True)
    # Where the lab listens (host:port), the launcher's handle (pid or container id) and its token.
    # The token is a credential for the lab: it never leaves the server side (the proxy adds it).
    host = models.CharField(max_length=100, blank=True)
    port = models.PositiveIntegerField(null=True, blank=True)
    handle = models.CharField(max_length=100, blank=True)
    lab_token = models.CharField(max_length=100, blank=True)
    volume = models.CharField(max_length=200, blank=True)
    planned_duration_s = models.PositiveIntegerField(default=8 * 3600)
    error = models.TextField(blank=True)
    stop_reason = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    scheduled_at = models.DateTimeField(null=True, blank=True)
    starting_at = models.DateTimeField(null=True, blank=True)
    running_at = models.DateTimeField(null=True, blank=True)
    stopping_at = models.DateTimeField(null=True, blank=True)
    stopped_at = models.DateTimeField(null=True, blank=True)
    planned_end = models.DateTimeField(null=True, blank=True)
    last_activity_at = models.DateTimeField(null=True, blank=True)
    idle_since = models.DateTimeField(null=True, blank=True)
    idle_warned_at = models.DateTimeField(null=True, blank=True)
    extensions = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["team", "state"]), models.Index(fields=["owner", "state"])]

    def __str__(self):
        return f"{self.name} ({self.state})"

    @property
    def is_live(self) -> bool:
        return self.state in self.LIVE_STATES
