"""Governance pages. Thin: the access layer says who may, the services do, the selectors read.
One view serves a page and its htmx fragment (a `{% partialdef %}` of the same template)."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django_htmx.http import HttpResponseClientRedirect
from django.views.decorators.http import require_http_methods, require_POST

from governance import access, selectors, services
from governance.audit import audit_chain_verify
from governance.forms import (AuditFilterForm, MembershipAddForm, MembershipRoleForm, QuotaGrantForm, TeamCreateForm,
                              TeamUpdateForm, TokenCreateForm, add_domain_error)
from governance.models import Role
from portal.errors import DomainError


def _status(request, status: int) -> int:
    """htmx requests get 422 for invalid input: htmx swaps it in place (see the before-swap hook in
    the templates), while django-htmx's debug handler takes 400 for a crash page to display."""
    return 422 if request.htmx and status == 400 else status


def _go(request, name: str, **kwargs):
    """Redirect; for htmx, a client-side redirect (a plain 302 would be followed by the XHR and
    the next page swapped into the fragment's place)."""
    url = reverse(name, kwargs=kwargs)
    return HttpResponseClientRedirect(url) if request.htmx else redirect(url)


def _page_or_fragment(request, template: str, fragment: str, context: dict, status: int = 200):
    name = f"{template}#{fragment}" if request.htmx else template
    return render(request, name, context, status=_status(request, status))


# --- Teams ---------------------------------------------------------------------------------

@login_required
@require_http_methods(["GET", "POST"])
def team_list(request):
    form = None
    if request.method == "POST":
        access.require(request.user, "team.create")
        form = TeamCreateForm(request.POST)
        if form.is_valid():
            data = form.cleaned_data
            try:
                team = services.team_create(actor=request.user, name=data["name"], slug=data["slug"],
                                            description=data["description"], owner_username=data["owner"])
            except DomainError as error:
                add_domain_error(form, error)
            else:
                messages.success(request, f"Team {team.name} created.")
                return _go(request, "team-detail", slug=team.slug)
    elif access.can(request.user, "team.create"):
        form = TeamCreateForm()
    context = {"teams": selectors.team_list_for_user(user=request.user), "form": form,
               "can_create": access.can(request.user, "team.create")}
    if request.method == "POST":  # only the create form was sent: htmx swaps just that back
        return _page_or_fragment(request, "governance/team_list.html", "create-form", context, status=400)
    return render(request, "governance/team_list.html", context)


def _members_context(request, team, *, add_form=None, error: str = "", notice: str = "") -> dict:
    return {
        "team": team,
        "memberships": selectors.membership_list(team=team),
        "can_manage": access.can(request.user, "team.manage_members", team),
        "can_change": access.can(request.user, "team.change", team),
        "add_form": add_form or MembershipAddForm(),
        "roles": Role.choices,
        "member_error": error,
        "member_notice": notice,
    }


def _members_response(request, team, *, add_form=None, error: str = "", notice: str = "", status: int = 200):
    """htmx: the members section swaps in place. Without JavaScript: back to the page (PRG), or
    the page re-rendered with the error."""
    context = _members_context(request, team, add_form=add_form, error=error, notice=notice)
    if request.htmx:
        return render(request, "governance/team_detail.html#members", context, status=_status(request, status))
    if status == 200:
        if notice:
            messages.success(request, notice)
        return redirect("team-detail", slug=team.slug)
    return render(request, "governance/team_detail.html", context, status=status)


@login_required
def team_detail(request, slug):
    team = access.team_get_for_user(request.user, slug)
    return _page_or_fragment(request, "governance/team_detail.html", "members", _members_context(request, team))


@login_required
@require_http_methods(["GET", "POST"])
def team_edit(request, slug):
    team = access.team_get_for_user(request.user, slug, "team.change")
    form = TeamUpdateForm(request.POST or None, initial={"name": team.name, "description": team.description})
    if request.method == "POST" and form.is_valid():
        try:
            services.team_update(actor=request.user, team=team, **form.cleaned_data)
        except DomainError as error:
            add_domain_error(form, error)
        else:
            messages.success(request, "Team updated.")
            return redirect("team-detail", slug=team.slug)
    return render(request, "governance/team_edit.html", {"team": team, "form": form}, status=400 if form.errors else 200)


@login_required
@require_POST
def team_member_add(request, slug):
    team = access.team_get_for_user(request.user, slug, "team.manage_members")
    form = MembershipAddForm(request.POST)
    if form.is_valid():
        try:
            membership = services.membership_add(actor=request.user, team=team, **form.cleaned_data)
        except DomainError as error:
            add_domain_error(form, error)
        else:
            return _members_response(request, team, notice=f"{membership.user.username} added as {membership.role}.")
    return _members_response(request, team, add_form=form, status=400)


def _membership_for(request, slug, pk):
    team = access.team_get_for_user(request.user, slug, "team.manage_members")
    membership = selectors.membership_get(team=team, pk=pk)
    if membership is None:
        raise Http404("No such member.")
    return team, membership


@login_required
@require_POST
def team_member_role(request, slug, pk):
    team, membership = _membership_for(request, slug, pk)
    form = MembershipRoleForm(request.POST)
    if not form.is_valid():
        return _members_response(request, team, error="Choose a valid role.", status=400)
    try:
        membership = services.membership_change_role(actor=request.user, membership=membership, role=form.cleaned_data["role"])
    except DomainError as error:
        return _members_response(request, team, error=error.message, status=error.status)
    return _members_response(request, team, notice=f"{membership.user.username} is now {membership.role}.")


@login_required
@require_POST
def team_member_remove(request, slug, pk):
    team, membership = _membership_for(request, slug, pk)
    try:
        services.membership_remove(actor=request.user, membership=membership)
    except DomainError as error:
        return _members_response(request, team, error=error.message, status=error.status)
    if membership.user_id == request.user.pk and not access.can(request.user, "team.view", team):
        messages.info(request, f"You left {team.name}.")
        return _go(request, "team-list")
    return _members_response(request, team, notice=f"{membership.user.username} removed.")


# --- Profile and tokens ----------------------------------------------------------------------

def _token_form(request, data=None) -> TokenCreateForm:
    return TokenCreateForm(data, may_decide_quota=access.can(request.user, "quota.decide"))


def _tokens_context(request, *, form=None, new_secret: str = "", new_token=None) -> dict:
    return {"tokens": selectors.token_list(user=request.user), "form": form or _token_form(request),
            "new_secret": new_secret, "new_token": new_token, "max_days": services.TOKEN_MAX_DAYS}


@login_required
def profile(request):
    access.require(request.user, "account.use")
    return _page_or_fragment(request, "governance/profile.html", "tokens", _tokens_context(request))


@login_required
@require_POST
def token_create(request):
    access.require(request.user, "account.use")
    form = _token_form(request, request.POST)
    if form.is_valid():
        try:
            token, secret = services.api_token_create(user=request.user, name=form.cleaned_data["name"],
                                                      scopes=form.cleaned_data["scopes"], expires_at=form.expires_at())
        except DomainError as error:
            add_domain_error(form, error)
        else:
            # Shown in this response only: the secret is never stored, so a reload cannot show it again.
            return _page_or_fragment(request, "governance/profile.html", "tokens",
                                     _tokens_context(request, new_secret=secret, new_token=token))
    return _page_or_fragment(request, "governance/profile.html", "tokens", _tokens_context(request, form=form), status=400)


@login_required
@require_POST
def token_revoke(request, pk):
    access.require(request.user, "account.use")
    token = selectors.token_get(user=request.user, pk=pk)
    if token is None:
        raise Http404("No such token.")
    context = _tokens_context(request)
    try:
        services.api_token_revoke(actor=request.user, token=token)
    except DomainError as error:
        context["token_error"] = error.message
    if not request.htmx:
        return redirect("profile")
    return render(request, "governance/profile.html#tokens", context)


# --- Quota grants ----------------------------------------------------------------------------

@login_required
def quota(request):
    access.require(request.user, "quota.view")
    show_ended = request.GET.get("ended") == "1"
    context = {"grants": selectors.quota_grants_for_user(user=request.user, include_ended=show_ended),
               "show_ended": show_ended, "can_edit": access.can(request.user, "quota.grant_edit")}
    return render(request, "governance/quota.html", context)


@login_required
@require_http_methods(["GET", "POST"])
def quota_grant_create(request):
    access.require(request.user, "quota.grant_edit")
    form = QuotaGrantForm(request.POST or None, initial={"team": request.GET.get("team")})
    if request.method == "POST" and form.is_valid():
        try:
            services.quota_grant_create(actor=request.user, **form.cleaned_data)
        except DomainError as error:
            add_domain_error(form, error)
        else:
            messages.success(request, "Quota grant created.")
            return redirect("quota")
    return render(request, "governance/quota_grant_form.html", {"form": form, "grant": None}, status=400 if form.errors else 200)


def _grant_or_404(pk):
    grant = selectors.quota_grant_get(pk=pk)
    if grant is None:
        raise Http404("No such grant.")
    return grant


@login_required
@require_http_methods(["GET", "POST"])
def quota_grant_edit(request, pk):
    access.require(request.user, "quota.grant_edit")
    grant = _grant_or_404(pk)
    initial = {"team": grant.team.slug, "flavor": grant.flavor, "count": grant.count, "starts_at": grant.starts_at, "ends_at": grant.ends_at}
    form = QuotaGrantForm(request.POST or None, initial=initial)
    form.fields["team"].disabled = True  # a grant stays with its team; end it and create another instead
    if request.method == "POST" and form.is_valid():
        # An emptied start keeps the grant's start; an emptied end makes it open-ended.
        data = {k: v for k, v in form.cleaned_data.items() if k != "team" and not (k == "starts_at" and v is None)}
        try:
            services.quota_grant_update(actor=request.user, grant=grant, **data)
        except DomainError as error:
            add_domain_error(form, error)
        else:
            messages.success(request, "Quota grant updated.")
            return redirect("quota")
    return render(request, "governance/quota_grant_form.html", {"form": form, "grant": grant}, status=400 if form.errors else 200)


@login_required
@require_POST
def quota_grant_end(request, pk):
    access.require(request.user, "quota.grant_edit")
    grant = _grant_or_404(pk)
    try:
        services.quota_grant_end(actor=request.user, grant=grant)
    except DomainError as error:
        messages.error(request, error.message)
    else:
        messages.success(request, f"Grant {grant.count}x {grant.flavor} for {grant.team.name} ended.")
    return redirect("quota")


# --- Audit trail -----------------------------------------------------------------------------

@login_required
def audit_list(request):
    access.require(request.user, "audit.view")
    form = AuditFilterForm(request.GET or None)
    filters = form.cleaned_data if form.is_valid() else {}
    events = selectors.audit_events(**{k: v for k, v in filters.items() if v})
    page = Paginator(events, 50).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    context = {"form": form, "page": page, "query": query.urlencode()}
    return _page_or_fragment(request, "governance/audit_list.html", "events", context)


@login_required
def audit_verify(request):
    """The chain check reads every event, so the page loads it separately (htmx, on load)."""
    access.require(request.user, "audit.view")
    return render(request, "governance/audit_list.html#chain", {"chain": audit_chain_verify()})
