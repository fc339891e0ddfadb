"""Team list and membership list cost a fixed number of queries, page and API, however many
rows there are (2 or 20)."""

import pytest

from governance.models import Role
from tests.factories import MembershipFactory, TeamFactory, UserFactory

pytestmark = pytest.mark.django_db

# session + user, then the view's own reads; each list is one query whatever its length.
PAGE_TEAM_LIST = 4      # session, user, team roles (nav), teams with member counts
PAGE_MEMBERS = 5        # session, user, team, team roles, memberships with their users
API_TEAM_LIST = 5       # session, user, team roles, count, page of teams
API_MEMBERS = 6         # session, user, team, team roles, count, page of memberships with users


def _teams_for(user, n):
    for i in range(n):
        team = TeamFactory(name=f"Team {i:02}", slug=f"t-{i:02}")
        MembershipFactory(team=team, user=user, role=Role.MEMBER)
        MembershipFactory(team=team, user=UserFactory(username=f"peer-{i:02}"), role=Role.OWNER)


def _members_in(team, n):
    for i in range(n):
        MembershipFactory(team=team, user=UserFactory(username=f"m-{i:02}"), role=Role.MEMBER)


@pytest.mark.parametrize("rows", [2, 20])
def test_team_list_page(client, django_assert_num_queries, rows):
    user = UserFactory(username="lister")
    _teams_for(user, rows)
    client.force_login(user)
    with django_assert_num_queries(PAGE_TEAM_LIST):
        response = client.get("/teams/")
    assert response.content.decode().count('href="/teams/t-') == rows


@pytest.mark.parametrize("rows", [2, 20])
def test_team_list_api(client, django_assert_num_queries, rows):
    user = UserFactory(username="lister")
    _teams_for(user, rows)
    client.force_login(user)
    with django_assert_num_queries(API_TEAM_LIST):
        response = client.get("/api/v1/teams/")
    assert response.json()["count"] == rows and len(response.json()["results"]) == rows


@pytest.mark.parametrize("rows", [2, 20])
def test_membership_list_page(client, django_assert_num_queries, owner, team, rows):
    _members_in(team, rows)
    client.force_login(owner)
    with django_assert_num_queries(PAGE_MEMBERS):
        response = client.get("/teams/vision/")
    assert response.content.decode().count('<tr id="member-') == rows + 1


@pytest.mark.parametrize("rows", [2, 20])
def test_membership_list_api(client, django_assert_num_queries, owner, team, rows):
    _members_in(team, rows)
    client.force_login(owner)
    with django_assert_num_queries(API_MEMBERS):
        response = client.get("/api/v1/teams/vision/memberships/")
    assert response.json()["count"] == rows + 1
