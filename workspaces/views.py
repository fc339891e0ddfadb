"""Workspace pages. Thin: workspaces.access says who may, workspaces.services do, selectors read.
One view serves its page and its htmx fragment (a `{% partialdef %}` of the same template)."""

import datetime

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from governance.access import ROLE_RANK, can, team_roles
from governance.forms import add_domain_error
from governance.models import Role
from portal.errors import DomainError
from workspaces import selectors, services
from workspaces.access import workspace_get_for_user
from workspaces.forms import WorkspaceCreateForm, WorkspaceExtendForm

ACTIONS = ("stop", "cancel", "restart", "extend")


@login_required
@require_GET
def workspace_list(request):
    scope = request.GET.get("show", "live")
    workspaces = selectors.workspace_list_for_user(user=request.user, live_only=scope == "live")[:200]
    may_launch = any(ROLE_RANK[role] >= ROLE_RANK[Role.MEMBER] for role in team_roles(request.user).values())
    context = {"workspaces": workspaces, "show": scope, "can_create": may_launch}
    name = "workspaces/workspace_list.html#rows" if request.htmx else "workspaces/workspace_list.html"
    return render(request, name, context)


def _hint(form: WorkspaceCreateForm):
    """The capacity/quota line under the form, from whatever fields are valid so far."""
    team = form.selected_team
    flavor_value = form.data.get("flavor") or (form.fields["flavor"].choices[0][0] if form.fields["flavor"].choices else "")
    if team is None or not flavor_value:
        return None
    try:
        count = max(1, int(form.data.get("gpu_count") or 1))
    except ValueError:
        count = 1
    mig = flavor_value.startswith("mig:")
    return selectors.capacity_hint(team=team, flavor=flavor_value[4:] if mig else flavor_value, mig=mig, count=count)


@login_required
@require_http_methods(["GET", "POST"])
def workspace_new(request):
    if request.method == "POST":
        form = WorkspaceCreateForm(request.POST, user=request.user)
        if form.is_valid():
            data = form.cleaned_data
            flavor, mig = form.flavor_parts()
            try:
                workspace = services.workspace_create(
                    user=request.user, team=data["team"], image=data["image"], gpu_count=data["gpu_count"],
                    flavor=flavor, mig=mig, duration=datetime.timedelta(hours=data["duration_hours"]),
                    sharing=data["sharing"], name=data["name"],
                )
            except DomainError as error:
                add_domain_error(form, error)
            else:
                messages.success(request, f"Workspace {workspace.name} requested.")
                return redirect("workspace-detail", pk=workspace.pk)
        status = 400
    else:
        # htmx validates in place: the form's fields arrive as query parameters on every change.
        form = WorkspaceCreateForm(request.GET if request.htmx else None, user=request.user)
        if request.htmx and form.is_valid():
            data = form.cleaned_data
            try:
                services.workspace_policy_check(user=request.user, team=data["team"], image=data["image"],
                                                gpu_count=data["gpu_count"],
                                                duration=datetime.timedelta(hours=data["duration_hours"]))
            except DomainError as error:
                add_domain_error(form, error)
        status = 200
    if form.selected_team is None:
        raise PermissionDenied("You are not a member of a team that may use GPUs.")
    context = {"form": form, "hint": _hint(form), "policy": form.selected_team.policy, "team": form.selected_team}
    name = "workspaces/workspace_new.html#checks" if request.htmx and request.method == "GET" else "workspaces/workspace_new.html"
    return render(request, name, context, status=status)


def _detail_context(request, workspace, *, extend_form=None, error: str = "") -> dict:
    request_obj = workspace.allocation_request
    return {
        "workspace": workspace,
        "request_obj": request_obj if request_obj and request_obj.state == "pending" and workspace.state == "pending" else None,
        "devices": selectors.workspace_devices(workspace=workspace),
        "preempt_at": selectors.workspace_preempt_at(workspace=workspace),
        "idle": selectors.workspace_idle_status_or_none(workspace),
        "can_operate": can(request.user, "workspace.operate", workspace),
        "can_enter": can(request.user, "workspace.enter", workspace),
        "extend_form": extend_form or WorkspaceExtendForm(),
        "action_error": error,
    }


@login_required
@require_GET
def workspace_detail(request, pk):
    workspace = workspace_get_for_user(request.user, pk)
    name = "workspaces/workspace_detail.html#status" if request.htmx else "workspaces/workspace_detail.html"
    return render(request, name, _detail_context(request, workspace))


@login_required
@require_POST
def workspace_action(request, pk, action):
    if action not in ACTIONS:
        raise Http404("No such action.")
    workspace = workspace_get_for_user(request.user, pk, "workspace.operate")
    extend_form = None
    try:
        if action == "stop":
            workspace = services.workspace_stop(workspace=workspace, actor=request.user)
        elif action == "cancel":
            workspace = services.workspace_cancel(workspace=workspace, actor=request.user)
        elif action == "restart":
            workspace = services.workspace_restart(workspace=workspace, actor=request.user)
        else:
            extend_form = WorkspaceExtendForm(request.POST)
            if not extend_form.is_valid():
                raise DomainError("Extend by a number of hours.", fields={"hours": extend_form.errors.get("hours", [""])[0]})
            workspace = services.workspace_extend(workspace=workspace, actor=request.user, hours=extend_form.cleaned_data["hours"])
    except DomainError as error:
        workspace = workspace_get_for_user(request.user, pk)
        status = error.status
        if request.htmx:
            return render(request, "workspaces/workspace_detail.html#status",
                          _detail_context(request, workspace, extend_form=extend_form, error=error.message), status=status)
        messages.error(request, error.message)
        return render(request, "workspaces/workspace_detail.html",
                      _detail_context(request, workspace, extend_form=extend_form, error=error.message), status=status)
    if request.htmx:
        workspace = workspace_get_for_user(request.user, pk)
        return render(request, "workspaces/workspace_detail.html#status", _detail_context(request, workspace))
    messages.success(request, {"stop": "Stopping.", "cancel": "Cancelled.", "restart": "Requested again.",
                               "extend": "Extended."}[action])
    return redirect("workspace-detail", pk=workspace.pk)
