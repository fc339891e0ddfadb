from django.db.models import Count

from governance import access
from governance.models import Membership, Team


def team_list_for_user(*, user):
    """Teams the user may see, with member counts, in one query."""
    return access.teams_visible_to(user).annotate(member_count=Count("memberships")).order_by("name")


def membership_list(*, team: Team):
    return Membership.objects.filter(team=team).select_related("user").order_by("user__username")
