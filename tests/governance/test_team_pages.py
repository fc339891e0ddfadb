"""Team list and team page: members added, re-roled and removed through htmx without a full
reload (the members section comes back as a fragment), errors shown in place, and the rules
about owners held. Invalid input answers 422 to htmx (swapped in place) and 400 without it."""

import pytest

from governance.models import AuditEvent, Membership, Role, Team
from tests.factories import UserFactory
from tests.governance.helpers import assert_unchanged, snapshot

pytestmark = pytest.mark.django_db
HTMX = {"HTTP_HX_REQUEST": "true"}


def _membership(user):
    return Membership.objects.get(user=user)


def test_team_page_lists_members_with_role_badges(client, member, owner, team):
    client.force_login(member)
    html = client.get(f"/teams/{team.slug}/").content.decode()
    assert "mia-member" in html and "olivia-owner" in html
    assert 'class="badge role-owner"' in html and 'class="badge role-member"' in html
    assert "Add member" not in html  # a member cannot manage members: no controls shown


def test_admin_adds_member_through_htmx_and_gets_the_fragment(client, team_admin, team):
    UserFactory(username="nina")
    client.force_login(team_admin)
    response = client.post(f"/teams/{team.slug}/members/", {"username": "nina", "role": "viewer"}, **HTMX)
    assert response.status_code == 200
    html = response.content.decode()
    assert html.lstrip().startswith('<section id="members"') and "<html" not in html
    assert "nina" in html and "nina added as viewer" in html
    assert Membership.objects.get(team=team, user__username="nina").role == Role.VIEWER


def test_unknown_username_is_an_error_in_place_and_changes_nothing(client, team_admin, team):
    client.force_login(team_admin)
    before = snapshot()
    response = client.post(f"/teams/{team.slug}/members/", {"username": "nobody", "role": "member"}, **HTMX)
    assert response.status_code == 422
    html = response.content.decode()
    assert '<section id="members"' in html and "No active user with this username." in html
    assert 'aria-invalid="true"' in html and 'value="nobody"' in html
    assert_unchanged(before)


def test_adding_someone_twice_is_refused(client, owner, member, team):
    client.force_login(owner)
    before = snapshot()
    response = client.post(f"/teams/{team.slug}/members/", {"username": member.username, "role": "admin"}, **HTMX)
    assert response.status_code == 422 and "Already a member of this team." in response.content.decode()
    assert_unchanged(before)


def test_change_role_and_remove_through_htmx(client, owner, member, team):
    client.force_login(owner)
    membership = _membership(member)
    response = client.post(f"/teams/{team.slug}/members/{membership.pk}/role/", {"role": "admin"}, **HTMX)
    assert response.status_code == 200 and "mia-member is now admin" in response.content.decode()
    assert _membership(member).role == Role.ADMIN
    response = client.post(f"/teams/{team.slug}/members/{membership.pk}/remove/", **HTMX)
    assert response.status_code == 200 and "mia-member removed" in response.content.decode()
    assert not Membership.objects.filter(user=member).exists()


def test_without_javascript_the_forms_post_and_redirect_back(client, owner, member, team):
    client.force_login(owner)
    membership = _membership(member)
    response = client.post(f"/teams/{team.slug}/members/{membership.pk}/role/", {"role": "viewer"})
    assert response.status_code == 302 and response["Location"] == f"/teams/{team.slug}/"
    assert _membership(member).role == Role.VIEWER


def test_the_last_owner_cannot_be_demoted_or_removed(client, owner, team):
    client.force_login(owner)
    membership = _membership(owner)
    before = snapshot()
    response = client.post(f"/teams/{team.slug}/members/{membership.pk}/role/", {"role": "admin"}, **HTMX)
    assert response.status_code == 422 and "at least one owner" in response.content.decode()
    response = client.post(f"/teams/{team.slug}/members/{membership.pk}/remove/", **HTMX)
    assert response.status_code == 422 and "last one" in response.content.decode()
    assert_unchanged(before)


def test_an_owner_can_step_down_once_another_owner_exists(client, owner, member, team):
    client.force_login(owner)
    client.post(f"/teams/{team.slug}/members/{_membership(member).pk}/role/", {"role": "owner"}, **HTMX)
    response = client.post(f"/teams/{team.slug}/members/{_membership(owner).pk}/role/", {"role": "member"}, **HTMX)
    assert response.status_code == 200
    assert _membership(owner).role == Role.MEMBER and _membership(member).role == Role.OWNER


def test_a_team_admin_cannot_grant_or_touch_the_owner_role(client, team_admin, owner, member, team):
    client.force_login(team_admin)
    before = snapshot()
    assert client.post(f"/teams/{team.slug}/members/{_membership(member).pk}/role/", {"role": "owner"}, **HTMX).status_code == 403
    assert client.post(f"/teams/{team.slug}/members/{_membership(owner).pk}/remove/", **HTMX).status_code == 403
    assert client.post(f"/teams/{team.slug}/members/{_membership(team_admin).pk}/role/", {"role": "owner"}, **HTMX).status_code == 403
    assert _membership(owner).role == Role.OWNER and _membership(team_admin).role == Role.ADMIN
    assert before["memberships"] == snapshot()["memberships"]
    assert AuditEvent.objects.filter(outcome="denied").count() == 3


def test_a_membership_of_another_team_is_not_found(client, owner, outsider, other_team, team):
    client.force_login(owner)
    foreign = Membership.objects.get(team=other_team, user=outsider)
    response = client.post(f"/teams/{team.slug}/members/{foreign.pk}/remove/", **HTMX)
    assert response.status_code == 404
    assert Membership.objects.filter(pk=foreign.pk).exists()


def test_platform_admin_creates_a_team_with_its_owner(client, platform_admin, member):
    client.force_login(platform_admin)
    response = client.post("/teams/", {"name": "Robotics", "slug": "robotics", "description": "", "owner": member.username})
    assert response.status_code == 302 and response["Location"] == "/teams/robotics/"
    team = Team.objects.get(slug="robotics")
    assert Membership.objects.get(team=team).user == member and team.policy.pk


def test_duplicate_or_bad_slug_is_an_error_in_place(client, platform_admin, team):
    client.force_login(platform_admin)
    before = snapshot()
    response = client.post("/teams/", {"name": "Again", "slug": "vision"}, **HTMX)
    assert response.status_code == 422 and "This slug is taken." in response.content.decode()
    response = client.post("/teams/", {"name": "Bad", "slug": "Not A Slug"}, **HTMX)
    assert response.status_code == 422 and "lowercase letters" in response.content.decode()
    response = client.post("/teams/", {"name": "x" * 101, "slug": "ok"}, **HTMX)
    assert response.status_code == 422 and "at most 100 characters" in response.content.decode()
    assert_unchanged(before)


def test_team_list_shows_only_own_teams_to_members(client, member, other_team, team):
    client.force_login(member)
    html = client.get("/teams/").content.decode()
    assert "Vision" in html and "Speech" not in html and "Create a team" not in html


def test_owner_edits_the_team(client, owner, team):
    client.force_login(owner)
    response = client.post(f"/teams/{team.slug}/edit/", {"name": "Vision Lab", "description": "Cameras"})
    assert response.status_code == 302
    team.refresh_from_db()
    assert (team.name, team.description, team.slug) == ("Vision Lab", "Cameras", "vision")



def test_without_javascript_an_error_renders_the_whole_page_with_400(client, team_admin, team):
    client.force_login(team_admin)
    before = snapshot()
    response = client.post(f"/teams/{team.slug}/members/", {"username": "nobody", "role": "member"})
    assert response.status_code == 400
    html = response.content.decode()
    assert "<html" in html and "No active user with this username." in html
    assert_unchanged(before)


def test_creating_a_team_through_htmx_redirects_the_browser(client, platform_admin):
    client.force_login(platform_admin)
    response = client.post("/teams/", {"name": "Robotics", "slug": "robotics"}, **HTMX)
    assert response.status_code == 200 and response["HX-Redirect"] == "/teams/robotics/"


def test_leaving_a_team_through_htmx_redirects_to_the_team_list(client, owner, team_admin, team):
    client.force_login(team_admin)
    response = client.post(f"/teams/{team.slug}/members/{_membership(team_admin).pk}/remove/", **HTMX)
    assert response["HX-Redirect"] == "/teams/" and not Membership.objects.filter(user=team_admin).exists()
