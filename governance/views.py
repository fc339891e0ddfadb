from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from governance import access, selectors


@login_required
def team_list(request):
    return render(request, "governance/team_list.html", {"teams": selectors.team_list_for_user(user=request.user)})


@login_required
def team_detail(request, slug):
    team = access.team_get_for_user(request.user, slug)
    return render(request, "governance/team_detail.html", {"team": team, "memberships": selectors.membership_list(team=team)})


@login_required
def profile(request):
    return render(request, "governance/profile.html", {})
