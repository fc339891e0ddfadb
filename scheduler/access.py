"""Who may see and act on the scheduler's objects (registered into governance.access.perms at app
ready). Fleet-wide pages use governance's fleet.view / fleet.manage; a team's allocation requests
(with their pending reasons, queue positions and estimated start) are visible to the team's people
(viewer and up) and to platform staff."""

from django.http import Http404

from governance.access import can, is_platform_staff, is_team_viewer, perms, require
from scheduler.models import AllocationRequest, Node, Reservation

perms.add_rule("allocation_request.view", is_team_viewer | is_platform_staff)


def node_get_for_user(user, name: str, perm: str = "fleet.view") -> Node:
    """The node, or PermissionDenied (audited) without `perm`, or 404 when no node has that name.
    The fleet is not a team's secret: the check comes first, so nobody learns names by probing."""
    require(user, perm)
    node = Node.objects.filter(name=name).first()
    if node is None:
        raise Http404("No such node.")
    return node


def allocation_request_get_for_user(user, pk) -> AllocationRequest:
    """The request, or 404 when it does not exist or the user may not see it."""
    try:
        request = AllocationRequest.objects.select_related("team", "user").get(pk=int(pk))
    except (AllocationRequest.DoesNotExist, ValueError, TypeError):
        raise Http404("No such allocation request.") from None
    if not can(user, "allocation_request.view", request):
        raise Http404("No such allocation request.")
    return request


def reservation_get_for_user(user, pk, perm: str = "fleet.manage") -> Reservation:
    require(user, perm)
    try:
        return Reservation.objects.select_related("team", "created_by").get(pk=int(pk))
    except (Reservation.DoesNotExist, ValueError, TypeError):
        raise Http404("No such reservation.") from None
