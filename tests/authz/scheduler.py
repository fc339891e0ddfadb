"""Authorization table for the Fleet pages and the scheduler API (inventory, queue, reservations).

The fleet is platform staff's view (approvers, auditors, platform admins); acting on it is for
platform admins. Allocation requests belong to teams: their people see them, others get 404."""

import datetime

from django.utils import timezone

from scheduler.gpus import GpuInfo, NodeInfo
from scheduler.models import AllocationRequest, Node, Reservation
from tests.authz import Case, api, page

STAFF = {"approver": 200, "auditor": 200, "platform_admin": 200}
TEAM_ROLES_403 = dict(outsider=403, viewer=403, member=403, admin=403, owner=403)
FLEET_VIEW = {**TEAM_ROLES_403, **STAFF}
# Platform admins only; everyone else who is signed in is refused (and audited).
ADMIN_ONLY = dict(TEAM_ROLES_403, approver=403, auditor=403)


def _node(world, name="authz-node", **fields):
    from scheduler.inventory import node_register

    info = NodeInfo(name=name, gpus=tuple(GpuInfo(uuid=f"GPU-{name}-{i}", index=i, model="H100", memory_mb=81920) for i in range(4)),
                    simulated=True)
    node = node_register(info=info)
    if fields:
        Node.objects.filter(pk=node.pk).update(**fields)
    return node


def _reservation(world):
    world.get("node")
    now = timezone.now()
    return Reservation.objects.create(team=world.team, flavor="H100", count=1, starts_at=now + datetime.timedelta(hours=1),
                                      ends_at=now + datetime.timedelta(hours=3))


def _reservation_form(world):
    world.get("node")
    start = timezone.now() + datetime.timedelta(days=1)
    return {"team": world.team.slug, "flavor": "H100", "count": 1, "note": "authz",
            "starts_at": start.strftime("%Y-%m-%dT%H:%M"), "ends_at": (start + datetime.timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M")}


def _reservation_json(world):
    world.get("node")
    start = timezone.now() + datetime.timedelta(days=1)
    return {"team": world.team.slug, "flavor": "H100", "count": 1, "starts_at": start.isoformat(),
            "ends_at": (start + datetime.timedelta(hours=2)).isoformat()}


def _request(world):
    return AllocationRequest.objects.create(team=world.team, user=world.user("member"), flavor="H100", count=1,
                                            pending_reasons=[{"code": "no_capacity_together", "message": "busy"}])


OBJECTS = {
    "node": _node,
    "drained_node": lambda w: _node(w, "authz-drained", state=Node.State.DRAINING, drain_reason="maintenance"),
    "down_node": lambda w: _node(w, "authz-down", state=Node.State.DOWN),
    "reservation": _reservation,
    "allocation_request": _request,
}


def _name(key):
    return lambda w: {"name": w.get(key).name}


def _pk(key):
    return lambda w: {"pk": w.get(key).pk}


CASES = {
    # Pages
    "fleet": [Case(page(**FLEET_VIEW))],
    "fleet-node": [Case(page(**FLEET_VIEW), kwargs=_name("node"))],
    "fleet-node-drain": [Case(page(platform_admin=302, **ADMIN_ONLY), method="post", kwargs=_name("node"), data={"reason": "x"})],
    "fleet-node-undrain": [Case(page(platform_admin=302, **ADMIN_ONLY), method="post", kwargs=_name("drained_node"))],
    "fleet-node-confirm-gone": [Case(page(platform_admin=302, **ADMIN_ONLY), method="post", kwargs=_name("down_node"))],
    "fleet-reservation-create": [Case(page(platform_admin=302, **ADMIN_ONLY), method="post", data=_reservation_form)],
    "fleet-reservation-cancel": [Case(page(platform_admin=302, **ADMIN_ONLY), method="post", kwargs=_pk("reservation"))],
    # API
    "api-node-list": [Case(api(**FLEET_VIEW))],
    "api-node-detail": [Case(api(**FLEET_VIEW), kwargs=_name("node"))],
    "api-node-drain": [Case(api(platform_admin=200, **ADMIN_ONLY), method="post", kwargs=_name("node"), json=True, data={"reason": "x"})],
    "api-node-undrain": [Case(api(platform_admin=200, **ADMIN_ONLY), method="post", kwargs=_name("drained_node"), json=True)],
    "api-node-confirm-gone": [Case(api(platform_admin=200, **ADMIN_ONLY), method="post", kwargs=_name("down_node"), json=True)],
    "api-gpu-list": [Case(api(**FLEET_VIEW))],
    "api-allocation-request-list": [Case(api(), default=200)],
    "api-allocation-request-detail": [Case(api(outsider=404), default=200, kwargs=_pk("allocation_request"))],
    "api-reservation-list": [
        Case(api(**FLEET_VIEW)),
        Case(api(platform_admin=201, **ADMIN_ONLY), method="post", json=True, data=_reservation_json),
    ],
    "api-reservation-detail": [
        Case(api(**FLEET_VIEW), kwargs=_pk("reservation")),
        Case(api(platform_admin=204, **ADMIN_ONLY), method="delete", kwargs=_pk("reservation")),
    ],
}
