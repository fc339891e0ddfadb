"""The audit page: auditors and platform admins page through events with filters, and see the
chain's verification status."""

import pytest

from governance import services
from governance.audit import audit_denied

pytestmark = pytest.mark.django_db


def test_filters_and_pagination(client, auditor, owner, team, other_team, outsider):
    for i in range(60):
        services.team_update(actor=owner, team=team, name=f"Vision {i}")
    services.team_update(actor=outsider, team=other_team, name="Speech 2")
    audit_denied(action="team.change", actor=outsider, team=team, reason="role does not allow this")
    client.force_login(auditor)
    html = client.get("/audit/").content.decode()
    assert "Page 1 of 2" in html and "62 events" in html and "Speech 2" in html
    html = client.get("/audit/?team=speech").content.decode()
    assert "Speech 2" in html and "Vision 5" not in html and "Page 1 of" not in html
    html = client.get("/audit/?outcome=denied").content.decode()
    assert "outcome-denied" in html and "outcome-success" not in html
    html = client.get("/audit/?actor=olivia&page=2").content.decode()
    assert "Page 2 of 2" in html and "Vision 0" in html
    fragment = client.get("/audit/?action=team.update", HTTP_HX_REQUEST="true").content.decode()
    assert fragment.lstrip().startswith('<section id="events"') and "<html" not in fragment


def test_chain_status_is_shown(client, platform_admin, owner, team):
    services.team_update(actor=owner, team=team, name="A")
    client.force_login(platform_admin)
    assert 'hx-get="/audit/verify/"' in client.get("/audit/").content.decode()
    status = client.get("/audit/verify/", HTTP_HX_REQUEST="true").content.decode()
    assert "chain verified · 1 events" in status
