"""API tokens: the secret is shown once and only its hash is stored; the token works as a
Bearer credential within its scopes; revocation takes effect on the very next request."""

import datetime
import hashlib
import re

import pytest
from django.utils import timezone

from governance.models import ApiToken, AuditEvent
from tests.factories import make_token

pytestmark = pytest.mark.django_db


def _bearer(secret):
    return {"HTTP_AUTHORIZATION": f"Bearer {secret}"}


def test_profile_page_shows_the_secret_once_and_stores_only_its_hash(client, member):
    client.force_login(member)
    response = client.post("/profile/tokens/", {"name": "laptop", "scopes": ["read", "write"], "expires_in_days": "30"},
                           HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    html = response.content.decode()
    secret = re.search(r'value="(gpt_[0-9a-f]+_[^"]+)"', html).group(1)
    assert html.lstrip().startswith('<section id="tokens"') and "shown only this once" in html
    token = ApiToken.objects.get(user=member)
    assert token.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in str(list(ApiToken.objects.values()))  # no column holds the secret
    assert token.scopes == ["read", "write"]
    assert datetime.timedelta(days=29) < token.expires_at - timezone.now() <= datetime.timedelta(days=30)
    # A reload never shows it again.
    assert secret not in client.get("/profile/").content.decode()
    # And it works.
    me = client.get("/api/v1/me/", **_bearer(secret))
    assert me.status_code == 200 and me.json()["username"] == member.username


def test_api_creates_a_token_whose_secret_is_only_in_that_response(client, member):
    client.force_login(member)
    response = client.post("/api/v1/tokens/", {"name": "ci", "scopes": ["read"], "expires_in_days": 7}, content_type="application/json")
    assert response.status_code == 201
    body = response.json()
    assert body["token"].startswith("gpt_") and body["state"] == "active"
    listed = client.get("/api/v1/tokens/").json()
    assert listed["count"] == 1 and "token" not in listed["results"][0]
    assert client.get(f"/api/v1/tokens/{body['id']}/").json().get("token") is None


def test_revoked_token_is_refused_on_the_next_request(client, member):
    token, secret = make_token(member, scopes=["read", "write"])
    assert client.get("/api/v1/me/", **_bearer(secret)).status_code == 200
    # Revoke through the API with the token itself, then use it again.
    assert client.delete(f"/api/v1/tokens/{token.pk}/", **_bearer(secret)).status_code == 204
    response = client.get("/api/v1/me/", **_bearer(secret))
    assert response.status_code == 401 and response.json()["detail"] == "Token has been revoked."
    event = AuditEvent.objects.get(action="token.revoke")
    assert event.token_id == token.pk and event.actor_label == f"token:{token.key_id} ({member.username})"


def test_revoke_from_the_profile_page_through_htmx(client, member):
    token, secret = make_token(member)
    client.force_login(member)
    response = client.post(f"/profile/tokens/{token.pk}/revoke/", HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and "revoked" in response.content.decode()
    assert client.get("/api/v1/me/", **_bearer(secret)).status_code == 401
    again = client.post(f"/profile/tokens/{token.pk}/revoke/", HTTP_HX_REQUEST="true")
    assert "already revoked" in again.content.decode()
    assert AuditEvent.objects.filter(action="token.revoke").count() == 1


def test_someone_elses_token_cannot_be_seen_or_revoked(client, member, viewer):
    token, _ = make_token(member)
    client.force_login(viewer)
    assert client.get(f"/api/v1/tokens/{token.pk}/").status_code == 404
    assert client.delete(f"/api/v1/tokens/{token.pk}/").status_code == 404
    assert client.post(f"/profile/tokens/{token.pk}/revoke/").status_code == 404
    token.refresh_from_db()
    assert token.revoked_at is None


def test_read_scope_cannot_write(client, owner, team):
    _, secret = make_token(owner, scopes=["read"])
    assert client.get("/api/v1/teams/vision/", **_bearer(secret)).status_code == 200
    response = client.patch("/api/v1/teams/vision/", data='{"name": "X"}', content_type="application/json", **_bearer(secret))
    assert response.status_code == 403 and "write" in response.json()["detail"]
    team.refresh_from_db()
    assert team.name == "Vision"
    assert AuditEvent.objects.filter(outcome="denied").count() == 1


def test_write_scope_without_read_cannot_list(client, owner, team):
    _, secret = make_token(owner, scopes=["write"])
    assert client.get("/api/v1/teams/", **_bearer(secret)).status_code == 403
    response = client.patch("/api/v1/teams/vision/", data='{"name": "Vision Lab"}', content_type="application/json", **_bearer(secret))
    assert response.status_code == 200 and response.json()["name"] == "Vision Lab"


def test_a_token_cannot_mint_a_wider_or_longer_lived_token(client, member):
    _, secret = make_token(member, scopes=["read", "write"], expires_at=timezone.now() + datetime.timedelta(days=5))
    wider = client.post("/api/v1/tokens/", data='{"name": "x", "scopes": ["read", "write", "quota"], "expires_in_days": 1}',
                        content_type="application/json", **_bearer(secret))
    longer = client.post("/api/v1/tokens/", data='{"name": "x", "scopes": ["read"], "expires_in_days": 30}',
                         content_type="application/json", **_bearer(secret))
    ok = client.post("/api/v1/tokens/", data='{"name": "x", "scopes": ["read"], "expires_in_days": 2}',
                     content_type="application/json", **_bearer(secret))
    assert (wider.status_code, longer.status_code, ok.status_code) == (400, 400, 201)
    assert ApiToken.objects.filter(user=member).count() == 2


def test_quota_scope_is_for_approvers_only(client, member, approver):
    client.force_login(member)
    refused = client.post("/api/v1/tokens/", data='{"name": "x", "scopes": ["quota"], "expires_in_days": 1}', content_type="application/json")
    assert refused.status_code == 400 and "scopes" in refused.json()["fields"]
    client.force_login(approver)
    allowed = client.post("/api/v1/tokens/", data='{"name": "x", "scopes": ["quota"], "expires_in_days": 1}', content_type="application/json")
    assert allowed.status_code == 201


def test_last_used_is_recorded(client, member):
    token, secret = make_token(member)
    assert token.last_used_at is None
    client.get("/api/v1/me/", **_bearer(secret))
    token.refresh_from_db()
    assert token.last_used_at is not None


def test_me_reports_platform_and_team_roles(client, owner, other_team):
    owner.is_auditor = True
    owner.save()
    client.force_login(owner)
    body = client.get("/api/v1/me/").json()
    assert body["platform_roles"] == ["auditor"] and body["is_auditor"] is True
    assert body["teams"] == [{"slug": "vision", "name": "Vision", "role": "owner"}]
