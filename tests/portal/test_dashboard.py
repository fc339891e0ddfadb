"""Each role lands on a home page with what it needs first."""

import pytest

from governance import services
from tests.factories import QuotaGrantFactory

pytestmark = pytest.mark.django_db


def _home(client, user):
    client.force_login(user)
    response = client.get("/")
    assert response.status_code == 200
    return response.content.decode()


def test_member_sees_teams_and_workspaces(client, member, team):
    html = _home(client, member)
    assert "Your teams" in html and 'href="/teams/vision/"' in html and "Your workspaces" in html
    assert "Platform" not in html and "Recent audit events" not in html and "Quota of the teams" not in html


def test_viewer_sees_teams_but_no_workspace_section(client, viewer, team):
    html = _home(client, viewer)
    assert 'href="/teams/vision/"' in html and "Your workspaces" not in html


def test_owner_sees_their_teams_quota(client, owner, team, other_team):
    QuotaGrantFactory(team=team, flavor="H100", count=4)
    QuotaGrantFactory(team=other_team, flavor="A100", count=2)
    html = _home(client, owner)
    assert "Quota of the teams you own" in html and "H100" in html and "A100" not in html


def test_approver_and_platform_admin_see_platform_counts(client, approver, platform_admin, team):
    for user in (approver, platform_admin):
        html = _home(client, user)
        assert "GPU requests waiting" in html and "workspaces running" in html and "nodes" in html


def test_auditor_sees_recent_audit_events(client, auditor, owner, team):
    services.team_update(actor=owner, team=team, name="Vision Lab")
    html = _home(client, auditor)
    assert "Recent audit events" in html and "team.update" in html


def test_user_in_no_team_is_told_what_to_do(client, django_user_model):
    user = django_user_model.objects.create_user("loner", password="x-Secret-123")
    html = _home(client, user)
    assert "You are not in a team yet" in html
