"""The Fleet pages: nodes and GPUs, the whole pending queue with its reasons, live allocations by
team, reservations, and the admins' node actions. Thin views: the access layer checks, selectors
read, services write; one view serves a page and its htmx fragments (template partials)."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST

from governance.access import can, require
from governance.forms import add_domain_error
from portal.errors import DomainError
from scheduler import fleet_selectors, inventory, selectors, services
from scheduler.access import node_get_for_user, reservation_get_for_user
from scheduler.forms import NodeConfirmGoneForm, NodeDrainForm, ReservationForm

QUEUE_PAGE_SIZE = 50


def _queue_context(request) -> dict:
    paginator = Paginator(selectors.pending_queue(), QUEUE_PAGE_SIZE)
    page = paginator.get_page(request.GET.get("qpage"))
    return {"queue_page": page, "queue_total": paginator.count}


def _reservation_form(data=None) -> ReservationForm:
    models, profiles = fleet_selectors.flavors_in_fleet()
    return ReservationForm(data, models=models, profiles=profiles)


def _reservations_context(request, form: ReservationForm | None = None) -> dict:
    can_manage = can(request.user, "fleet.manage")
    return {
        "reservations": list(fleet_selectors.reservations_current()),
        "reservation_form": (form or _reservation_form()) if can_manage else None,
        "can_manage": can_manage,
    }


@login_required
@require_GET
def fleet(request):
    """The Fleet page; htmx polling asks for `?part=queue` or `?part=nodes` (states, heartbeats)."""
    require(request.user, "fleet.view")
    part = request.GET.get("part") if request.htmx else None
    if part == "queue":
        return render(request, "scheduler/fleet.html#queue", _queue_context(request))
    if part == "nodes":
        return render(request, "scheduler/fleet.html#nodes_body", {
            "overview": fleet_selectors.fleet_overview(), "can_manage": can(request.user, "fleet.manage")})
    context = {
        "overview": fleet_selectors.fleet_overview(),
        "down_after_s": int(inventory.down_after().total_seconds()),
        **_queue_context(request),
        **_reservations_context(request),
    }
    return render(request, "scheduler/fleet.html", context)


@login_required
@require_GET
def node_detail(request, name):
    node = node_get_for_user(request.user, name)
    detail = fleet_selectors.node_detail(node=node)
    return render(request, "scheduler/node_detail.html", {
        "detail": detail, "node": detail.node, "summary": fleet_selectors.node_summaries([detail.node])[0],
        "can_manage": can(request.user, "fleet.manage"), "simulated": fleet_selectors.gpus_simulated([detail.node]),
        "history": fleet_selectors.node_history(node=node) if can(request.user, "audit.view") else None,
        "down_after_s": int(inventory.down_after().total_seconds()),
    })


def _back(request, fallback: str):
    target = request.POST.get("next", "")
    if target and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        return redirect(target)
    return redirect(fallback)


@login_required
@require_POST
def node_action(request, name, action):
    """Drain, undrain or confirm gone. htmx swaps the node's row (with the refusal in it, if any);
    a plain form post redirects back with a message."""
    node = node_get_for_user(request.user, name, "fleet.manage")
    error = None
    try:
        if action == "drain":
            form = NodeDrainForm(request.POST)
            if not form.is_valid():
                raise DomainError("; ".join(m for ms in form.errors.values() for m in ms), code="invalid")
            node = inventory.node_drain(node=node, actor=request.user, reason=form.cleaned_data["reason"])
            done = f"Node {node.name} is drained: nothing new is placed there."
        elif action == "undrain":
            node = inventory.node_undrain(node=node, actor=request.user)
            done = f"Node {node.name} accepts new work again."
        else:
            form = NodeConfirmGoneForm(request.POST)
            note = form.cleaned_data["note"] if form.is_valid() else ""
            released = inventory.node_confirm_gone(node=node, actor=request.user, note=note)
            done = f"Node {node.name} confirmed gone; {len(released)} request(s) went back to the queue."
    except DomainError as exc:
        error, done = exc.message, None
    if request.htmx:
        return render(request, "scheduler/fleet.html#node_row", {
            "row": fleet_selectors.node_summary(node=node), "can_manage": True, "row_error": error, "row_done": done,
            "down_after_s": int(inventory.down_after().total_seconds()),
        })
    if error:
        messages.error(request, error)
    else:
        messages.success(request, done)
    return _back(request, reverse("fleet"))


@login_required
@require_POST
def reservation_create(request):
    require(request.user, "fleet.manage")
    form = _reservation_form(request.POST)
    if form.is_valid():
        flavor, mig = form.flavor_and_mig()
        try:
            reservation = services.reservation_create(
                team=form.cleaned_data["team"], flavor=flavor, mig=mig, count=form.cleaned_data["count"],
                starts_at=form.cleaned_data["starts_at"], ends_at=form.cleaned_data["ends_at"],
                actor=request.user, note=form.cleaned_data["note"])
        except DomainError as exc:
            add_domain_error(form, exc)
        else:
            if request.htmx:
                return render(request, "scheduler/fleet.html#reservations", {
                    **_reservations_context(request), "reservation_done": reservation})
            messages.success(request, f"Reserved {reservation.count} {reservation.flavor} for {reservation.team.name}.")
            return redirect(reverse("fleet") + "#reservations")
    if request.htmx:
        return render(request, "scheduler/fleet.html#reservations", _reservations_context(request, form))
    context = {
        "overview": fleet_selectors.fleet_overview(), "down_after_s": int(inventory.down_after().total_seconds()),
        **_queue_context(request), **_reservations_context(request, form),
    }
    return render(request, "scheduler/fleet.html", context, status=400)


@login_required
@require_POST
def reservation_cancel(request, pk):
    reservation = reservation_get_for_user(request.user, pk)
    services.reservation_cancel(reservation=reservation, actor=request.user)
    if request.htmx:
        return render(request, "scheduler/fleet.html#reservations", _reservations_context(request))
    messages.success(request, f"Reservation of {reservation.count} {reservation.flavor} for {reservation.team.name} cancelled.")
    return redirect(reverse("fleet") + "#reservations")
