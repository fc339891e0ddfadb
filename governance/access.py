"""The one access layer. Every view, API endpoint and websocket consumer asks here; nothing else
decides who may do what.

Permissions are `rules` predicates over (user, object). Team roles are read once per user
object (one query) and cached on it, so checking many objects costs no further queries.

Visibility vs. permission: someone who may not even see an object gets 404 (we do not confirm it
exists); someone who sees it but lacks the role for an action gets 403, and the refusal is audited.
"""

import rules
from django.core.exceptions import PermissionDenied
from django.http import Http404

from governance.models import Membership, Role, Team

ROLE_RANK = {Role.VIEWER: 1, Role.MEMBER: 2, Role.ADMIN: 3, Role.OWNER: 4}


def team_roles(user) -> dict[int, str]:
    """{team_id: role} for the user, cached on the user object for the request's life."""
    if not getattr(user, "is_authenticated", False):
        return {}
    cached = getattr(user, "_portal_team_roles", None)
    if cached is None:
        cached = dict(Membership.objects.filter(user_id=user.pk).values_list("team_id", "role"))
        user._portal_team_roles = cached
    return cached


def forget_roles(user) -> None:
    """Call after changing a user's memberships within the same request."""
    if hasattr(user, "_portal_team_roles"):
        del user._portal_team_roles


def _team_id(obj) -> int | None:
    if obj is None:
        return None
    if isinstance(obj, Team):
        return obj.pk
    return getattr(obj, "team_id", None)


def role_at_least(minimum: str):
    @rules.predicate(name=f"team_role>={minimum}")
    def predicate(user, obj) -> bool:
        role = team_roles(user).get(_team_id(obj))
        return role is not None and ROLE_RANK[role] >= ROLE_RANK[minimum]

    return predicate


@rules.predicate
def is_authenticated(user) -> bool:
    return bool(getattr(user, "is_authenticated", False) and user.is_active)


@rules.predicate
def is_platform_admin(user) -> bool:
    return bool(getattr(user, "is_authenticated", False) and user.is_active and user.is_platform_admin)


@rules.predicate
def is_approver(user) -> bool:
    return bool(getattr(user, "is_authenticated", False) and user.is_active and user.is_approver)


@rules.predicate
def is_auditor(user) -> bool:
    return bool(getattr(user, "is_authenticated", False) and user.is_active and user.is_auditor)


is_team_viewer = role_at_least(Role.VIEWER)
is_team_member = role_at_least(Role.MEMBER)
is_team_admin = role_at_least(Role.ADMIN)
is_team_owner = role_at_least(Role.OWNER)
is_platform_staff = is_platform_admin | is_approver | is_auditor


@rules.predicate
def owns_a_team(user) -> bool:
    return any(role == Role.OWNER for role in team_roles(user).values())

perms = rules.RuleSet()
# Teams and people
perms.add_rule("team.view", is_team_viewer | is_platform_staff)
perms.add_rule("team.create", is_platform_admin)
perms.add_rule("team.change", is_team_owner | is_platform_admin)
perms.add_rule("team.manage_members", is_team_admin | is_platform_admin)
perms.add_rule("team.change_policy", is_platform_admin)
perms.add_rule("team.request_quota", is_team_owner | is_platform_admin)
perms.add_rule("team.use_gpus", is_team_member)
# Platform-wide
perms.add_rule("quota.decide", is_approver | is_platform_admin)
perms.add_rule("quota.grant_edit", is_platform_admin)
perms.add_rule("fleet.view", is_platform_staff)
perms.add_rule("fleet.manage", is_platform_admin)
perms.add_rule("audit.view", is_auditor | is_platform_admin)
perms.add_rule("quota.view", owns_a_team | is_platform_staff)
perms.add_rule("account.use", is_authenticated)


def can(user, perm: str, obj=None) -> bool:
    return perms.test_rule(perm, user, obj)


def require(user, perm: str, obj=None, *, team: Team | None = None) -> None:
    """Raise PermissionDenied (and audit the refusal) unless `user` has `perm` on `obj`."""
    if can(user, perm, obj):
        return
    from governance.audit import audit_denied

    audit_denied(action=perm, actor=user, target=obj if hasattr(obj, "_meta") else None,
                 team=team or (obj if isinstance(obj, Team) else None), reason="role does not allow this")
    denied = PermissionDenied(f"Your role does not allow {perm}.")
    denied.audited = True
    raise denied


def team_get_for_user(user, slug: str, perm: str = "team.view") -> Team:
    """The team, or 404 when the user may not see it, or 403 (audited) when they see it but lack `perm`."""
    team = Team.objects.filter(slug=slug).first()
    if team is None or not can(user, "team.view", team):
        raise Http404("No such team.")
    require(user, perm, team)
    return team


def teams_visible_to(user):
    if not is_authenticated(user):
        return Team.objects.none()
    if is_platform_staff(user):
        return Team.objects.all()
    return Team.objects.filter(pk__in=list(team_roles(user)))


def navigation_for(user) -> dict:
    roles = team_roles(user)
    in_a_team = bool(roles)
    return {
        "workspaces": in_a_team or is_platform_admin(user),
        "quota": can(user, "quota.view") or can(user, "quota.decide"),
        "fleet": can(user, "fleet.view"),
        "audit": can(user, "audit.view"),
        "admin": is_platform_admin(user),
    }
