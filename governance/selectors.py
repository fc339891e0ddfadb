"""Reads. Each selector owns its joins so list pages and list APIs cost a fixed number of queries."""

from django.db.models import Count, Q
from django.utils import timezone

from governance import access
from governance.models import ApiToken, AuditEvent, Membership, QuotaGrant, Team, User


def team_list_for_user(*, user):
    """Teams the user may see, with member counts, in one query."""
    return access.teams_visible_to(user).annotate(member_count=Count("memberships")).order_by("name")


def membership_list(*, team: Team):
    return Membership.objects.filter(team=team).select_related("user").order_by("user__username")


def membership_get(*, team: Team, pk) -> Membership | None:
    return Membership.objects.select_related("user", "team").filter(team=team, pk=pk).first()


def token_list(*, user: User):
    return ApiToken.objects.filter(user=user).order_by("-created_at")


def token_get(*, user: User, pk) -> ApiToken | None:
    """A user's own token; anyone else's does not exist for them."""
    return ApiToken.objects.filter(user=user, pk=pk).first()


def quota_grants_for_user(*, user, include_ended: bool = False):
    """Grants the user may see: every team's for platform staff, their teams' otherwise."""
    grants = QuotaGrant.objects.select_related("team", "created_by").order_by("team__name", "flavor", "-starts_at")
    if not (access.is_platform_staff(user)):
        grants = grants.filter(team__in=access.teams_visible_to(user))
    if not include_ended:
        grants = grants.filter(Q(ends_at__isnull=True) | Q(ends_at__gt=timezone.now()))
    return grants


def quota_grant_get(*, pk) -> QuotaGrant | None:
    return QuotaGrant.objects.select_related("team").filter(pk=pk).first()


def audit_events(*, team: str = "", actor: str = "", action: str = "", outcome: str = ""):
    """Audit events newest first, filtered by team slug, actor label, action prefix and outcome."""
    events = AuditEvent.objects.select_related("team").order_by("-id")
    if team:
        events = events.filter(team__slug=team)
    if actor:
        events = events.filter(actor_label__icontains=actor)
    if action:
        events = events.filter(action__startswith=action)
    if outcome:
        events = events.filter(outcome=outcome)
    return events


def audit_recent(*, limit: int = 10):
    return AuditEvent.objects.select_related("team").order_by("-id")[:limit]


def team_granted_flavors(*, team: Team) -> list[str]:
    """Flavors the team holds an active grant for, largest grant first."""
    now = timezone.now()
    return list(QuotaGrant.objects.filter(team=team, starts_at__lte=now).filter(Q(ends_at__isnull=True) | Q(ends_at__gt=now))
                .order_by("-count", "flavor").values_list("flavor", flat=True))
