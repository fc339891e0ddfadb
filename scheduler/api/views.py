"""Scheduler REST endpoints: the inventory (nodes, GPUs), node actions, the queue (allocation
requests with their pending reasons, positions and estimated start) and reservations.
Each view: access layer -> input serializer -> service -> output serializer; list endpoints run
a fixed number of queries per page (pinned in tests)."""

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.response import Response
from rest_framework.views import APIView

from governance.access import require
from governance.api.serializers import paginated
from governance.api.views import _errors
from governance.models import Team
from portal.errors import DomainError
from scheduler import fleet_selectors, inventory, services
from scheduler.access import allocation_request_get_for_user, node_get_for_user, reservation_get_for_user
from scheduler.api import serializers as s
from scheduler.models import Allocation, AllocationRequest


def _paginate(request, view, queryset):
    paginator = LimitOffsetPagination()
    return paginator, paginator.paginate_queryset(queryset, request, view=view)


def _query_choice(request, name: str, choices) -> str:
    value = request.query_params.get(name, "")
    if value and value not in choices:
        raise DomainError(f"Unknown {name} {value!r}.", code="invalid", fields={name: [f"One of: {', '.join(choices)}."]})
    return value


def _node_out(node) -> dict:
    return s.NodeOutput(fleet_selectors.node_summary(node=node)).data


class NodeListApi(APIView):
    @extend_schema(operation_id="nodes_list", responses={200: paginated(s.NodeOutput), **_errors(401, 403)},
                   summary="Nodes with their state, last heartbeat and GPU counts (fleet viewers)")
    def get(self, request):
        require(request.user, "fleet.view")
        paginator, nodes = _paginate(request, self, fleet_selectors.node_list())
        return paginator.get_paginated_response(s.NodeOutput(fleet_selectors.node_summaries(list(nodes)), many=True).data)


class NodeDetailApi(APIView):
    @extend_schema(operation_id="nodes_retrieve", responses={200: s.NodeOutput, **_errors(401, 403, 404)})
    def get(self, request, name):
        return Response(_node_out(node_get_for_user(request.user, name)))


class NodeDrainApi(APIView):
    @extend_schema(operation_id="nodes_drain", request=s.NodeDrainInput, responses={200: s.NodeOutput, **_errors(400, 401, 403, 404, 409)},
                   summary="Drain a node: nothing new is placed there, running work stays (platform admins)")
    def post(self, request, name):
        node = node_get_for_user(request.user, name, "fleet.manage")
        data = s.NodeDrainInput(data=request.data)
        data.is_valid(raise_exception=True)
        node = inventory.node_drain(node=node, actor=request.user, reason=data.validated_data["reason"])
        return Response(_node_out(node))


class NodeUndrainApi(APIView):
    @extend_schema(operation_id="nodes_undrain", request=s.NodeUndrainInput, responses={200: s.NodeOutput, **_errors(400, 401, 403, 404, 409)},
                   summary="Undrain a node (platform admins)")
    def post(self, request, name):
        node = node_get_for_user(request.user, name, "fleet.manage")
        s.NodeUndrainInput(data=request.data).is_valid(raise_exception=True)
        node = inventory.node_undrain(node=node, actor=request.user)
        return Response(_node_out(node))


class NodeConfirmGoneApi(APIView):
    @extend_schema(operation_id="nodes_confirm_gone", request=s.NodeConfirmGoneInput,
                   responses={200: s.NodeConfirmGoneOutput, **_errors(400, 401, 403, 404, 409)},
                   summary="Confirm a down node is gone: its allocations are released and their requests requeued (platform admins)")
    def post(self, request, name):
        node = node_get_for_user(request.user, name, "fleet.manage")
        data = s.NodeConfirmGoneInput(data=request.data)
        data.is_valid(raise_exception=True)
        requeued = inventory.node_confirm_gone(node=node, actor=request.user, note=data.validated_data["note"])
        return Response({"node": _node_out(node), "requeued_requests": requeued})


class GpuListApi(APIView):
    @extend_schema(operation_id="gpus_list", responses={200: paginated(s.GpuOutput), **_errors(400, 401, 403)},
                   parameters=[OpenApiParameter("node", str), OpenApiParameter("model", str),
                               OpenApiParameter("healthy", bool)],
                   summary="Every GPU with its MIG slices and the allocation holding it (fleet viewers)")
    def get(self, request):
        require(request.user, "fleet.view")
        healthy = _query_choice(request, "healthy", ["true", "false"])
        rows = fleet_selectors.gpu_list(node=request.query_params.get("node", ""), model=request.query_params.get("model", ""),
                                        healthy=None if not healthy else healthy == "true")
        paginator, page = _paginate(request, self, rows)
        by_gpu, by_slice = fleet_selectors.live_allocations_by_device(gpu_ids=[g.pk for g in page])
        data = s.GpuOutput(page, many=True, context={"by_gpu": by_gpu, "by_slice": by_slice}).data
        return paginator.get_paginated_response(data)


class AllocationRequestListApi(APIView):
    @extend_schema(operation_id="allocation_requests_list", responses={200: paginated(s.AllocationRequestOutput), **_errors(400, 401)},
                   parameters=[OpenApiParameter("state", str, enum=AllocationRequest.State.values), OpenApiParameter("team", str)],
                   summary="Allocation requests you may see, in queue order, with why each waits")
    def get(self, request):
        state = _query_choice(request, "state", AllocationRequest.State.values)
        rows = fleet_selectors.allocation_requests_visible_to(request.user, state=state,
                                                              team_slug=request.query_params.get("team", ""))
        paginator, page = _paginate(request, self, rows)
        return paginator.get_paginated_response(s.AllocationRequestOutput(page, many=True).data)


class AllocationRequestDetailApi(APIView):
    @extend_schema(operation_id="allocation_requests_retrieve", responses={200: s.AllocationRequestDetailOutput, **_errors(401, 404)})
    def get(self, request, pk):
        allocation_request = allocation_request_get_for_user(request.user, pk)
        allocation_request.allocation_rows = list(
            Allocation.objects.filter(request=allocation_request).select_related("node", "gpu", "mig_slice__gpu").order_by("started_at", "id"))
        return Response(s.AllocationRequestDetailOutput(allocation_request).data)


class ReservationListApi(APIView):
    @extend_schema(operation_id="reservations_list", responses={200: paginated(s.ReservationOutput), **_errors(401, 403)},
                   summary="Current and upcoming reservations (fleet viewers)")
    def get(self, request):
        require(request.user, "fleet.view")
        paginator, page = _paginate(request, self, fleet_selectors.reservations_current())
        return paginator.get_paginated_response(s.ReservationOutput(page, many=True).data)

    @extend_schema(operation_id="reservations_create", request=s.ReservationCreateInput,
                   responses={201: s.ReservationOutput, **_errors(400, 401, 403, 409)},
                   summary="Reserve N GPUs of a flavor for a team during a window (platform admins)")
    def post(self, request):
        require(request.user, "fleet.manage")
        data = s.ReservationCreateInput(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        team = Team.objects.filter(slug=v["team"]).first()
        if team is None:
            raise DomainError("No such team.", code="unknown_team", fields={"team": ["No team with this slug."]})
        reservation = services.reservation_create(team=team, flavor=v["flavor"], mig=v["mig"], count=v["count"],
                                                  starts_at=v["starts_at"], ends_at=v["ends_at"], actor=request.user, note=v["note"])
        return Response(s.ReservationOutput(reservation).data, status=status.HTTP_201_CREATED)


class ReservationDetailApi(APIView):
    @extend_schema(operation_id="reservations_retrieve", responses={200: s.ReservationOutput, **_errors(401, 403, 404)})
    def get(self, request, pk):
        return Response(s.ReservationOutput(reservation_get_for_user(request.user, pk, "fleet.view")).data)

    @extend_schema(operation_id="reservations_cancel", responses={204: None, **_errors(401, 403, 404)},
                   summary="Cancel a reservation (platform admins)")
    def delete(self, request, pk):
        reservation = reservation_get_for_user(request.user, pk, "fleet.manage")
        services.reservation_cancel(reservation=reservation, actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)
