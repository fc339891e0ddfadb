"""Bad input to the governance API: a clear 4xx with a JSON body {"error", "detail", "fields"?},
and nothing changes — same rows, same audit chain, still verifying."""

import datetime
import json

import pytest
from django.utils import timezone

from governance.models import Membership
from tests.factories import make_token
from tests.governance.helpers import assert_unchanged, snapshot

pytestmark = pytest.mark.django_db


def _send(client, method, url, body, **extra):
    payload = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return getattr(client, method)(url, data=payload, content_type="application/json", **extra)


def _json_error(response, status):
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["error"] and body["detail"]
    return body


@pytest.fixture
def admin_client(client, platform_admin, team):
    client.force_login(platform_admin)
    return client


@pytest.mark.parametrize(("method", "url"), [
    ("post", "/api/v1/teams/"),
    ("patch", "/api/v1/teams/vision/"),
    ("post", "/api/v1/teams/vision/memberships/"),
    ("post", "/api/v1/tokens/"),
])
def test_malformed_json_is_400(admin_client, method, url):
    before = snapshot()
    body = _json_error(_send(admin_client, method, url, '{"name": "x", '), 400)
    assert body["error"] == "parse_error"
    assert_unchanged(before)


@pytest.mark.parametrize(("method", "url", "body"), [
    ("post", "/api/v1/teams/", {"name": "Robotics", "slug": "robotics", "colour": "red"}),
    ("patch", "/api/v1/teams/vision/", {"name": "Vision", "slug": "renamed"}),
    ("post", "/api/v1/teams/vision/memberships/", {"username": "pat-platform", "rol": "admin"}),
    ("post", "/api/v1/tokens/", {"name": "ci", "scopes": ["read"], "expires_in_days": 3, "secret": "mine"}),
])
def test_unknown_fields_are_rejected(admin_client, method, url, body):
    before = snapshot()
    error = _json_error(_send(admin_client, method, url, body), 400)
    unknown = (set(body) - {"name", "slug", "username", "scopes", "expires_in_days"}) | ({"slug"} if method == "patch" else set())
    assert set(error["fields"]) == unknown and error["fields"][next(iter(unknown))] == ["Unknown field."]
    assert_unchanged(before)


@pytest.mark.parametrize(("method", "url", "body", "field"), [
    ("post", "/api/v1/teams/", {"name": 123, "slug": "robotics"}, "name"),
    ("post", "/api/v1/teams/", {"name": ["Robotics"], "slug": "robotics"}, "name"),
    ("post", "/api/v1/teams/", {"name": "Robotics", "slug": True}, "slug"),
    ("patch", "/api/v1/teams/vision/", {"description": {"text": "x"}}, "description"),
    ("post", "/api/v1/teams/vision/memberships/", {"username": "pat-platform", "role": "emperor"}, "role"),
    ("post", "/api/v1/tokens/", {"name": "ci", "scopes": "read", "expires_in_days": 3}, "scopes"),
    ("post", "/api/v1/tokens/", {"name": "ci", "scopes": ["read"], "expires_in_days": "3"}, "expires_in_days"),
    ("post", "/api/v1/tokens/", {"name": "ci", "scopes": ["admin"], "expires_in_days": 3}, "scopes"),
    ("post", "/api/v1/tokens/", {"name": "ci", "scopes": [], "expires_in_days": 3}, "scopes"),
])
def test_wrong_types_are_rejected(admin_client, method, url, body, field):
    before = snapshot()
    error = _json_error(_send(admin_client, method, url, body), 400)
    assert field in error["fields"]
    assert_unchanged(before)


def test_a_body_that_is_not_an_object_is_rejected(admin_client):
    before = snapshot()
    _json_error(_send(admin_client, "post", "/api/v1/teams/", ["Robotics", "robotics"]), 400)
    assert_unchanged(before)


@pytest.mark.parametrize(("url", "body", "field"), [
    ("/api/v1/teams/", {"name": "x" * 101, "slug": "robotics"}, "name"),
    ("/api/v1/teams/", {"name": "Robotics", "slug": "r" * 51}, "slug"),
    ("/api/v1/teams/", {"name": "Robotics", "slug": "robotics", "description": "d" * 2001}, "description"),
    ("/api/v1/teams/", {"name": "Robotics", "slug": "Has Spaces"}, "slug"),
    ("/api/v1/teams/", {"name": "", "slug": "robotics"}, "name"),
    ("/api/v1/teams/", {"name": "Robotics", "slug": "robotics", "owner": "ghost"}, "owner"),
    ("/api/v1/teams/vision/memberships/", {"username": "u" * 151}, "username"),
    ("/api/v1/tokens/", {"name": "t" * 101, "scopes": ["read"], "expires_in_days": 3}, "name"),
    ("/api/v1/tokens/", {"name": "ci", "scopes": ["read"], "expires_in_days": 366}, "expires_in_days"),
])
def test_oversized_or_malformed_values_are_rejected(admin_client, url, body, field):
    before = snapshot()
    error = _json_error(_send(admin_client, "post", url, body), 400)
    assert field in error["fields"]
    assert_unchanged(before)


def test_token_expiry_must_be_given_future_and_bounded(admin_client):
    before = snapshot()
    now = timezone.now()
    for body in ({"name": "ci", "scopes": ["read"]},
                 {"name": "ci", "scopes": ["read"], "expires_at": (now - datetime.timedelta(minutes=1)).isoformat()},
                 {"name": "ci", "scopes": ["read"], "expires_at": (now + datetime.timedelta(days=400)).isoformat()},
                 {"name": "ci", "scopes": ["read"], "expires_at": "next tuesday"}):
        error = _json_error(_send(admin_client, "post", "/api/v1/tokens/", body), 400)
        assert "expires_at" in error["fields"]
    assert_unchanged(before)


def test_duplicate_slug_is_409(admin_client):
    before = snapshot()
    error = _json_error(_send(admin_client, "post", "/api/v1/teams/", {"name": "Vision again", "slug": "vision"}), 409)
    assert error["error"] == "duplicate" and "slug" in error["fields"]
    assert_unchanged(before)


def test_adding_a_member_twice_or_an_unknown_user(admin_client, member):
    before = snapshot()
    _json_error(_send(admin_client, "post", "/api/v1/teams/vision/memberships/", {"username": member.username}), 409)
    error = _json_error(_send(admin_client, "post", "/api/v1/teams/vision/memberships/", {"username": "ghost"}), 400)
    assert error["error"] == "unknown_user"
    assert_unchanged(before)


def test_removing_or_demoting_the_last_owner_is_400(admin_client, owner):
    before = snapshot()
    pk = Membership.objects.get(user=owner).pk
    error = _json_error(_send(admin_client, "patch", f"/api/v1/teams/vision/memberships/{pk}/", {"role": "member"}), 400)
    assert error["error"] == "last_owner"
    _json_error(admin_client.delete(f"/api/v1/teams/vision/memberships/{pk}/"), 400)
    assert_unchanged(before)


@pytest.mark.parametrize("state", ["expired", "revoked", "garbage", "wrong-secret"])
def test_an_unusable_token_is_401_json_and_changes_nothing(client, member, state):
    token, secret = make_token(member, scopes=["read", "write"])
    if state == "expired":
        type(token).objects.filter(pk=token.pk).update(expires_at=timezone.now() - datetime.timedelta(seconds=1))
    elif state == "revoked":
        type(token).objects.filter(pk=token.pk).update(revoked_at=timezone.now())
    elif state == "garbage":
        secret = "not-a-token"
    else:
        secret = secret[:-4] + "AAAA"
    before = snapshot()
    for method, url, body in (("get", "/api/v1/me/", None),
                              ("post", "/api/v1/tokens/", {"name": "x", "scopes": ["read"], "expires_in_days": 1})):
        call = getattr(client, method)
        response = call(url, **({"data": json.dumps(body), "content_type": "application/json"} if body else {}),
                        HTTP_AUTHORIZATION=f"Bearer {secret}")
        error = _json_error(response, 401)
        assert error["error"] == "authentication_failed"
        assert response["WWW-Authenticate"] == "Bearer"
    assert_unchanged(before)


def test_unauthenticated_api_is_401_json(client, team):
    error = _json_error(client.get("/api/v1/teams/"), 401)
    assert error["error"] == "not_authenticated"
