"""List pages and list endpoints of the fleet run a fixed number of queries, whatever the number
of nodes, GPUs, allocations, pending requests and reservations."""

import datetime

import pytest
from django.urls import reverse
from django.utils import timezone

from scheduler.inventory import node_register
from scheduler.models import AllocationRequest, GpuDevice, MigSlice, Reservation
from tests.scheduler.inventory_helpers import allocate, gpu, node_info

pytestmark = pytest.mark.django_db


def grow(n: int, team, user) -> None:
    """n more nodes (4 GPUs, one in MIG mode), a GPU and a slice allocated on each, n pending
    requests and n reservations."""
    start = GpuDevice.objects.values("node").distinct().count()
    for i in range(start, start + n):
        name = f"q{i}"
        node_register(info=node_info(name, [gpu(name, 0), gpu(name, 1), gpu(name, 2), gpu(name, 3, slices=("1g.10gb", "1g.10gb"))]))
        allocate(team=team, user=user, device=GpuDevice.objects.get(uuid=f"GPU-{name}-0"))
        allocate(team=team, user=user, device=MigSlice.objects.filter(gpu__uuid=f"GPU-{name}-3").first())
        AllocationRequest.objects.create(team=team, user=user, flavor="H100", count=2, queue_position_global=i + 1,
                                         pending_reasons=[{"code": "no_capacity_together", "message": "full"}])
        Reservation.objects.create(team=team, flavor="H100", count=1, starts_at=timezone.now() + datetime.timedelta(hours=i + 1),
                                   ends_at=timezone.now() + datetime.timedelta(hours=i + 2))


# (url name, role, kwargs, query string, pinned query count: session, user and roles included)
CASES = [
    ("fleet", "platform_admin", None, "", 13),
    ("fleet", "auditor", None, "?part=queue", 5),
    ("fleet", "platform_admin", None, "?part=nodes", 7),
    ("fleet-node", "approver", {"name": "q0"}, "", 10),
    ("fleet-node", "auditor", {"name": "q0"}, "", 11),  # plus the node's history
    ("api-node-list", "auditor", None, "", 7),
    ("api-gpu-list", "auditor", None, "", 6),
    ("api-allocation-request-list", "member", None, "", 5),
    ("api-allocation-request-list", "platform_admin", None, "?state=pending", 4),
    ("api-reservation-list", "approver", None, "", 4),
]


@pytest.mark.parametrize(("name", "role", "kwargs", "query", "pinned"), CASES)
def test_query_count_is_constant_as_the_fleet_grows(name, role, kwargs, query, pinned, client, team, member, user_for_role,
                                                    django_assert_num_queries):
    user = user_for_role(role)
    client.force_login(user)
    url = reverse(name, kwargs=kwargs) + query
    headers = {"HTTP_HX_REQUEST": "true"} if "part=" in query else {}
    grow(2, team, member)
    with django_assert_num_queries(pinned):
        assert client.get(url, **headers).status_code == 200
    grow(6, team, member)
    with django_assert_num_queries(pinned):
        assert client.get(url, **headers).status_code == 200
