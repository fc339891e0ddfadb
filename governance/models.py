import datetime
import hashlib
import secrets

from django.contrib.auth.models import AbstractUser
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.utils import timezone


class User(AbstractUser):
    """A person. Platform roles are flags here; team roles live on Membership."""

    is_platform_admin = models.BooleanField(default=False)
    is_approver = models.BooleanField(default=False)
    is_auditor = models.BooleanField(default=False)

    @property
    def platform_roles(self) -> list[str]:
        roles = []
        if self.is_platform_admin:
            roles.append("platform admin")
        if self.is_approver:
            roles.append("approver")
        if self.is_auditor:
            roles.append("auditor")
        return roles


slug_validator = RegexValidator(r"^[a-z0-9](?:[a-z0-9-]{0,48}[a-z0-9])?$", "Use 1-50 lowercase letters, digits and inner hyphens.")


class Team(models.Model):
    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=50, unique=True, validators=[slug_validator])
    description = models.TextField(blank=True, max_length=2000)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    MEMBER = "member", "Member"
    VIEWER = "viewer", "Viewer"


class Membership(models.Model):
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["team", "user"], name="membership_team_user_unique")]
        ordering = ["team__name", "user__username"]

    def __str__(self):
        return f"{self.user} in {self.team} as {self.role}"


class TeamPolicy(models.Model):
    """What a team may do. Platform admins edit it; services enforce it. Images are named by
    their catalogue name (governance knows nothing of containers)."""

    team = models.OneToOneField(Team, on_delete=models.CASCADE, related_name="policy")
    max_gpus_per_workspace = models.PositiveIntegerField(default=8, validators=[MinValueValidator(1), MaxValueValidator(64)])
    max_workspaces_per_user = models.PositiveIntegerField(default=4, validators=[MinValueValidator(1)])
    max_duration_hours = models.PositiveIntegerField(default=72, validators=[MinValueValidator(1)])
    max_lifetime_hours = models.PositiveIntegerField(default=168, validators=[MinValueValidator(1)])
    allowed_images = models.JSONField(default=list, blank=True, help_text="Image names; empty allows every catalogue image.")
    idle_gpu_util_threshold = models.FloatField(default=0.05, validators=[MinValueValidator(0), MaxValueValidator(1)])
    idle_window_minutes = models.PositiveIntegerField(default=60)
    idle_warning_minutes = models.PositiveIntegerField(default=15)
    borrow_limit = models.PositiveIntegerField(default=0, help_text="GPUs the team may borrow beyond its grants.")
    lending_limit = models.PositiveIntegerField(null=True, blank=True, help_text="GPUs of idle quota others may borrow; empty: no limit.")
    fair_share_weight = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)],
        help_text="The team's weight in fair share (as Slurm's shares or Kueue's fair-sharing weight); "
                  "empty: the GPUs granted to it now.")
    cpu_limit = models.FloatField(default=8.0)
    memory_limit_gb = models.PositiveIntegerField(default=64)

    def allows_image(self, image_name: str) -> bool:
        return not self.allowed_images or image_name in self.allowed_images


class QuotaGrant(models.Model):
    """GPUs of one flavor (a GPU model such as "H100", or a MIG profile such as "1g.18gb") a team
    is entitled to for a window. Written by the quota approval workflow or by platform admins."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="quota_grants")
    flavor = models.CharField(max_length=40)
    count = models.PositiveIntegerField()
    starts_at = models.DateTimeField(default=timezone.now)
    ends_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        indexes = [models.Index(fields=["team", "flavor"])]

    def __str__(self):
        return f"{self.team}: {self.count}x {self.flavor}"

    @property
    def state(self) -> str:
        """upcoming, active or ended, as of now."""
        now = timezone.now()
        if self.ends_at is not None and self.ends_at <= now:
            return "ended"
        return "upcoming" if self.starts_at > now else "active"


class ApiToken(models.Model):
    """A personal API token. Only a SHA-256 of the secret is stored; the secret is shown once."""

    PREFIX = "gpt_"
    SCOPES = [("read", "Read"), ("write", "Write"), ("quota", "Decide quota requests")]

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    key_id = models.CharField(max_length=16, unique=True)
    secret_hash = models.CharField(max_length=64)
    scopes = models.JSONField(default=list)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.name} ({self.key_id})"

    @staticmethod
    def hash_secret(secret: str) -> str:
        return hashlib.sha256(secret.encode()).hexdigest()

    @classmethod
    def new_secret(cls) -> tuple[str, str]:
        """(key_id, full token). The token is `gpt_<key_id>_<secret>`."""
        key_id = secrets.token_hex(6)
        return key_id, f"{cls.PREFIX}{key_id}_{secrets.token_urlsafe(32)}"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > timezone.now())


class AuditQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise PermissionError("audit events are append-only")

    def delete(self):
        raise PermissionError("audit events are append-only")


class AuditEvent(models.Model):
    """One record of who did what, to what, when, from where and with what outcome.

    Rows form a hash chain: `hash` = SHA-256 over the canonical JSON of this row's fields and
    `prev_hash`. Append-only: the application never updates or deletes a row (the model and
    queryset refuse; on PostgreSQL a trigger refuses too)."""

    class Outcome(models.TextChoices):
        SUCCESS = "success"
        DENIED = "denied"
        FAILED = "failed"

    # Few indexes: a scheduling pass appends thousands of events at once and pays for each index.
    # Pages read newest first by id, by team (the (team, created_at) index), by target or action.
    created_at = models.DateTimeField(default=timezone.now)
    actor = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", db_constraint=False)
    actor_label = models.CharField(max_length=150, help_text="Username, 'token:<key id> (<user>)' or 'system'.")
    token = models.ForeignKey(ApiToken, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", db_constraint=False)
    action = models.CharField(max_length=80, db_index=True)
    target_type = models.CharField(max_length=60, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    team = models.ForeignKey(Team, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", db_constraint=False,
                             db_index=False)
    source_ip = models.GenericIPAddressField(null=True, blank=True)
    request_id = models.CharField(max_length=64, blank=True)
    outcome = models.CharField(max_length=10, choices=Outcome.choices, default=Outcome.SUCCESS)
    changes = models.JSONField(default=dict, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)

    objects = AuditQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["target_type", "target_id"]), models.Index(fields=["team", "created_at"])]

    def save(self, *args, **kwargs):
        if self.pk is not None:
            raise PermissionError("audit events are append-only")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise PermissionError("audit events are append-only")

    def chain_payload(self) -> dict:
        """The fields the hash covers, in canonical form (ids, not objects; ISO time in UTC).
        governance.audit.audit_prepare builds this same dict without an instance: change both."""
        return {
            "created_at": self.created_at.astimezone(datetime.UTC).isoformat(timespec="microseconds"),
            "actor_id": self.actor_id,
            "actor_label": self.actor_label,
            "token_id": self.token_id,
            "action": self.action,
            "target_type": self.target_type,
            "target_id": self.target_id,
            "team_id": self.team_id,
            "source_ip": self.source_ip,
            "request_id": self.request_id,
            "outcome": self.outcome,
            "changes": self.changes,
            "prev_hash": self.prev_hash,
        }
