"""What each role sees first on the home page. Reads only: the portal wires the apps together,
so it may read each app's models; it writes nothing."""

from django.db.models import Count, Q
from django.utils import timezone

from governance import access, selectors as gov_selectors
from governance.models import QuotaGrant, Role, Team, User


def _my_workspaces(user):
    from workspaces.models import Workspace

    return list(Workspace.objects.filter(owner=user, state__in=Workspace.LIVE_STATES)
                .select_related("team").order_by("-id")[:8])


def _platform_counts() -> dict:
    from scheduler.models import AllocationRequest, GpuDevice, Node
    from workspaces.models import Workspace

    gpus = GpuDevice.objects.aggregate(total=Count("id"), unhealthy=Count("id", filter=Q(healthy=False)))
    return {
        "teams": Team.objects.count(),
        "users": User.objects.filter(is_active=True).count(),
        "pending_requests": AllocationRequest.objects.filter(state=AllocationRequest.State.PENDING).count(),
        "running_workspaces": Workspace.objects.filter(state=Workspace.State.RUNNING).count(),
        "nodes": Node.objects.count(),
        "nodes_down": Node.objects.filter(state=Node.State.DOWN).count(),
        "gpus": gpus["total"],
        "gpus_unhealthy": gpus["unhealthy"],
    }


def for_user(user) -> dict:
    roles = access.team_roles(user)
    owned = [team_id for team_id, role in roles.items() if role == Role.OWNER]
    context = {
        "teams": gov_selectors.team_list_for_user(user=user),
        "team_roles": roles,
        "platform_roles": user.platform_roles,
        "can_fleet": access.can(user, "fleet.view"),
        "can_audit": access.can(user, "audit.view"),
        "can_decide_quota": access.can(user, "quota.decide"),
        "can_use_gpus": bool(roles) and any(r != Role.VIEWER for r in roles.values()),
        "workspaces": _my_workspaces(user) if roles else [],
        "owned_grants": [],
        "counts": None,
        "recent_audit": [],
    }
    if owned:
        context["owned_grants"] = list(QuotaGrant.objects.filter(team_id__in=owned)
                                       .filter(Q(ends_at__isnull=True) | Q(ends_at__gt=timezone.now()))
                                       .select_related("team").order_by("team__name", "flavor"))
    if access.is_platform_admin(user) or access.is_approver(user):
        context["counts"] = _platform_counts()
    if context["can_audit"]:
        context["recent_audit"] = list(gov_selectors.audit_recent(limit=8))
    return context

