"""Workspace REST endpoints: access layer -> input serializer -> service -> output serializer."""

import datetime

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.response import Response
from rest_framework.views import APIView

from governance.access import team_get_for_user
from portal.errors import DomainError, NotFound
from workspaces import selectors, services
from workspaces.access import workspace_get_for_user
from workspaces.api import serializers as s
from workspaces.models import Image

ERRORS = {400: OpenApiResponse(description="Invalid input: {error, detail, fields}"),
          401: OpenApiResponse(description="Not authenticated"),
          403: OpenApiResponse(description="Your role or token scope does not allow this"),
          404: OpenApiResponse(description="Not found, or not visible to you"),
          409: OpenApiResponse(description="Conflicts with the workspace's current state")}


def _errors(*codes):
    return {code: ERRORS[code] for code in codes}


def _detail(workspace):
    context = {"devices": selectors.workspace_devices(workspace=workspace),
               "preempt_at": selectors.workspace_preempt_at(workspace=workspace)}
    return s.WorkspaceDetailOutput(workspace, context=context).data


class WorkspaceListApi(APIView):
    @extend_schema(operation_id="workspaces_list", responses={200: s.WorkspaceOutput(many=True), **_errors(401, 403)},
                   summary="Workspaces you may see (yours, your teams'); ?state=running to filter")
    def get(self, request):
        workspaces = selectors.workspace_list_for_user(user=request.user)
        state = request.query_params.get("state")
        if state:
            workspaces = workspaces.filter(state=state)
        paginator = LimitOffsetPagination()
        rows = paginator.paginate_queryset(workspaces, request, view=self)
        return paginator.get_paginated_response(s.WorkspaceOutput(rows, many=True).data)

    @extend_schema(operation_id="workspaces_create", request=s.WorkspaceCreateInput,
                   responses={201: s.WorkspaceDetailOutput, **_errors(400, 401, 403, 404)},
                   summary="Launch a workspace: pending until the scheduler places its GPUs")
    def post(self, request):
        data = s.WorkspaceCreateInput(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        team = team_get_for_user(request.user, v["team"], "team.use_gpus")
        image = Image.objects.filter(name=v["image"], active=True).first()
        if image is None:
            raise DomainError("No such image in the catalogue.", code="unknown_image", fields={"image": ["No such image in the catalogue."]})
        workspace = services.workspace_create(
            user=request.user, team=team, image=image, gpu_count=v["gpu_count"], flavor=v["flavor"], mig=v["mig"],
            duration=datetime.timedelta(hours=v["duration_hours"]), sharing=v["sharing"], name=v["name"],
        )
        return Response(_detail(workspace_get_for_user(request.user, workspace.pk)), status=status.HTTP_201_CREATED)


class WorkspaceDetailApi(APIView):
    @extend_schema(operation_id="workspaces_retrieve", responses={200: s.WorkspaceDetailOutput, **_errors(401, 404)},
                   summary="One workspace, with the scheduler's pending reasons, queue position and estimated start")
    def get(self, request, pk):
        return Response(_detail(workspace_get_for_user(request.user, pk)))


class WorkspaceActionApi(APIView):
    action_name = ""

    def post(self, request, pk):
        workspace = workspace_get_for_user(request.user, pk, "workspace.operate")
        if self.action_name == "extend":
            data = s.WorkspaceExtendInput(data=request.data)
            data.is_valid(raise_exception=True)
            services.workspace_extend(workspace=workspace, actor=request.user, hours=data.validated_data["hours"])
        else:
            data = s.EmptyInput(data=request.data)
            data.is_valid(raise_exception=True)
            if self.action_name == "stop":
                services.workspace_stop(workspace=workspace, actor=request.user, reason=data.validated_data["reason"])
            elif self.action_name == "cancel":
                services.workspace_cancel(workspace=workspace, actor=request.user, reason=data.validated_data["reason"])
            elif self.action_name == "restart":
                services.workspace_restart(workspace=workspace, actor=request.user)
            else:
                raise NotFound("No such action.")
        return Response(_detail(workspace_get_for_user(request.user, pk)))


def _action_view(name: str, input_serializer, summary: str):
    # A fresh function per action: extend_schema annotates the function object it decorates.
    def post(self, request, pk):
        return WorkspaceActionApi.post(self, request, pk)

    post = extend_schema(operation_id=f"workspaces_{name}", request=input_serializer,
                         responses={200: s.WorkspaceDetailOutput, **_errors(400, 401, 403, 404, 409)}, summary=summary)(post)
    view = type(f"Workspace{name.capitalize()}Api", (WorkspaceActionApi,), {"action_name": name, "post": post})
    return view.as_view()


stop_view = _action_view("stop", s.EmptyInput, "Stop a running workspace (GPUs released now; files kept)")
cancel_view = _action_view("cancel", s.EmptyInput, "Cancel a pending, scheduled or starting workspace")
restart_view = _action_view("restart", s.EmptyInput, "Request a stopped, failed or culled workspace again")
extend_view = _action_view("extend", s.WorkspaceExtendInput, "Move the planned end (within the team policy)")
