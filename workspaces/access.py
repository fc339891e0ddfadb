"""Who may do what with a workspace (registered into governance.access.perms at app ready).

- workspace.view: the owner, the team's members (any role) see its record; platform staff too.
- workspace.enter (the lab through the proxy): the owner; team members (member role or above) when
  shared with the team; platform admins for support (the proxy audits that).
- workspace.operate (stop/cancel/restart/extend): the owner, team admins/owners, platform admins.
"""

import rules
from django.http import Http404

from governance.access import (can, is_platform_admin, is_platform_staff, is_team_admin, is_team_member,
                               is_team_viewer, perms, require, team_roles)
from workspaces.models import Workspace


@rules.predicate
def is_workspace_owner(user, workspace) -> bool:
    return workspace is not None and getattr(user, "is_authenticated", False) and workspace.owner_id == user.pk


@rules.predicate
def is_shared_with_team(user, workspace) -> bool:
    return workspace is not None and workspace.sharing == Workspace.Sharing.TEAM


perms.add_rule("workspace.view", is_workspace_owner | is_team_viewer | is_platform_staff)
perms.add_rule("workspace.enter", is_workspace_owner | (is_shared_with_team & is_team_member) | is_platform_admin)
perms.add_rule("workspace.operate", is_workspace_owner | is_team_admin | is_platform_admin)


def workspace_get_for_user(user, pk, perm: str = "workspace.view") -> Workspace:
    """The workspace, or 404 when the user may not see it, or 403 (audited) when they see it but lack `perm`."""
    try:
        workspace = Workspace.objects.select_related("team", "owner", "image", "node", "allocation_request").get(pk=int(pk))
    except (Workspace.DoesNotExist, ValueError, TypeError):
        raise Http404("No such workspace.") from None
    if not can(user, "workspace.view", workspace):
        raise Http404("No such workspace.")
    require(user, perm, workspace, team=workspace.team)
    return workspace


def workspace_enterable(user, workspace: Workspace) -> bool:
    """The proxy's rule: who may not enter gets 404 (never told the lab exists)."""
    return can(user, "workspace.enter", workspace)


def is_support_access(user, workspace: Workspace) -> bool:
    """A platform admin entering a lab that is neither theirs nor shared with a team they are in."""
    if workspace.owner_id == user.pk:
        return False
    if workspace.sharing == Workspace.Sharing.TEAM and workspace.team_id in team_roles(user):
        return not is_team_member(user, workspace)
    return bool(is_platform_admin(user))
