"""Every governance service writes exactly one audit event with the right fields, in the same
transaction; the chain links, verifies, detects tampering, and refuses updates and deletes."""

import datetime

import pytest
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from governance import services
from governance.audit import GENESIS_HASH, audit_chain_verify, compute_hash
from governance.models import AuditEvent, Membership, Role
from portal import context
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def _one_new_event(before_id: int) -> AuditEvent:
    events = list(AuditEvent.objects.filter(id__gt=before_id))
    assert len(events) == 1, [e.action for e in events]
    return events[0]


def _last_id() -> int:
    return AuditEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0


def test_team_create_writes_one_event_with_the_new_fields(platform_admin, owner):
    start = _last_id()
    meta = context.set_meta(context.RequestMeta(request_id="req-123", source_ip="10.1.2.3"))
    try:
        team = services.team_create(actor=platform_admin, name="Robotics", slug="robotics", description="arms", owner_username=owner.username)
    finally:
        context.reset(meta)
    event = _one_new_event(start)
    assert (event.action, event.actor_id, event.actor_label) == ("team.create", platform_admin.pk, platform_admin.username)
    assert (event.target_type, event.target_id, event.team_id) == ("governance.team", str(team.pk), team.pk)
    assert (event.source_ip, event.request_id, event.outcome) == ("10.1.2.3", "req-123", "success")
    assert event.changes == {"name": [None, "Robotics"], "slug": [None, "robotics"], "description": [None, "arms"],
                             "owner": [None, owner.username]}
    assert team.policy is not None
    assert Membership.objects.get(team=team, user=owner).role == Role.OWNER


def test_team_update_records_only_what_changed(owner, team):
    start = _last_id()
    services.team_update(actor=owner, team=team, name="Vision Lab", description="")
    event = _one_new_event(start)
    assert event.action == "team.update" and event.changes == {"name": ["Vision", "Vision Lab"]}


def test_membership_services_each_write_one_event(owner, team):
    newcomer = UserFactory(username="nina")
    start = _last_id()
    membership = services.membership_add(actor=owner, team=team, username="nina", role=Role.VIEWER)
    event = _one_new_event(start)
    assert (event.action, event.team_id, event.target_id) == ("membership.add", team.pk, str(membership.pk))
    assert event.changes == {"user": [None, "nina"], "role": [None, "viewer"]}

    start = event.id
    services.membership_change_role(actor=owner, membership=membership, role=Role.ADMIN)
    event = _one_new_event(start)
    assert event.action == "membership.change_role" and event.changes["role"] == ["viewer", "admin"]

    start = event.id
    services.membership_remove(actor=owner, membership=membership)
    event = _one_new_event(start)
    assert event.action == "membership.remove" and event.changes == {"user": ["nina", None], "role": ["admin", None]}
    assert not Membership.objects.filter(user=newcomer).exists()


def test_token_services_each_write_one_event_without_the_secret(member):
    start = _last_id()
    token, secret = services.api_token_create(user=member, name="ci", scopes=["read"],
                                              expires_at=timezone.now() + datetime.timedelta(days=30))
    event = _one_new_event(start)
    assert (event.action, event.actor_id, event.target_id) == ("token.create", member.pk, str(token.pk))
    assert secret not in str(event.changes) and token.secret_hash not in str(event.changes)
    assert event.changes["key_id"] == [None, token.key_id]

    start = event.id
    services.api_token_revoke(actor=member, token=token)
    event = _one_new_event(start)
    assert event.action == "token.revoke" and event.changes["revoked_at"][0] is None


def test_quota_grant_services_each_write_one_event(platform_admin, team):
    start = _last_id()
    grant = services.quota_grant_create(actor=platform_admin, team=team, flavor="H100", count=4)
    event = _one_new_event(start)
    assert (event.action, event.team_id) == ("quota_grant.create", team.pk)
    assert event.changes["count"] == [None, 4] and event.changes["flavor"] == [None, "H100"]

    start = event.id
    services.quota_grant_update(actor=platform_admin, grant=grant, count=6)
    event = _one_new_event(start)
    assert event.action == "quota_grant.update" and event.changes == {"count": [4, 6]}

    start = event.id
    services.quota_grant_end(actor=platform_admin, grant=grant)
    event = _one_new_event(start)
    assert event.action == "quota_grant.update" and list(event.changes) == ["ends_at"]


def test_a_failed_service_leaves_no_event(owner, team):
    start = _last_id()
    with pytest.raises(Exception):
        services.membership_remove(actor=owner, membership=Membership.objects.get(user=owner))  # the last owner
    assert _last_id() == start


def test_the_chain_links_from_genesis_and_verifies(owner, team, platform_admin):
    services.team_update(actor=owner, team=team, name="A")
    services.team_update(actor=owner, team=team, name="B")
    services.quota_grant_create(actor=platform_admin, team=team, flavor="A100", count=1)
    events = list(AuditEvent.objects.order_by("id"))
    assert events[0].prev_hash == GENESIS_HASH
    for previous, event in zip(events, events[1:]):
        assert event.prev_hash == previous.hash
    for event in events:
        assert compute_hash(event.chain_payload()) == event.hash
    report = audit_chain_verify()
    assert report.ok and report.checked == len(events) == 3


def test_a_tampered_row_is_detected(owner, team):
    services.team_update(actor=owner, team=team, name="A")
    services.team_update(actor=owner, team=team, name="B")
    services.team_update(actor=owner, team=team, name="C")
    middle = AuditEvent.objects.order_by("id")[1]
    # Tamper below the application, as an attacker with database access would (SQLite has no trigger;
    # on PostgreSQL the trigger must be bypassed first, which only a superuser can do).
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("ALTER TABLE governance_auditevent DISABLE TRIGGER governance_auditevent_append_only")
        cursor.execute("UPDATE governance_auditevent SET actor_label = %s WHERE id = %s", ["mallory", middle.id])
        if connection.vendor == "postgresql":
            cursor.execute("ALTER TABLE governance_auditevent ENABLE TRIGGER governance_auditevent_append_only")
    report = audit_chain_verify()
    assert not report.ok
    assert report.first_bad_id == middle.id and "content changed" in report.problem


def test_the_application_cannot_update_or_delete_events(owner, team):
    services.team_update(actor=owner, team=team, name="A")
    event = AuditEvent.objects.get()
    event.action = "rewritten"
    with pytest.raises(PermissionError):
        event.save()
    with pytest.raises(PermissionError):
        event.delete()
    with pytest.raises(PermissionError):
        AuditEvent.objects.filter(pk=event.pk).update(action="rewritten")
    with pytest.raises(PermissionError):
        AuditEvent.objects.all().delete()
    assert AuditEvent.objects.get().action == "team.update"
    assert audit_chain_verify().ok


def test_postgresql_trigger_refuses_raw_sql_update_and_delete(owner, team):
    if connection.vendor != "postgresql":
        pytest.skip("the append-only trigger is a PostgreSQL feature; SQLite relies on the model guards tested above")
    services.team_update(actor=owner, team=team, name="A")
    event_id = AuditEvent.objects.get().id
    for statement in ("UPDATE governance_auditevent SET action = 'x' WHERE id = %s",
                      "DELETE FROM governance_auditevent WHERE id = %s"):
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(statement, [event_id])
    assert AuditEvent.objects.get().action == "team.update"
    assert audit_chain_verify().ok


def test_denied_attempts_are_recorded(client, viewer, team):
    client.force_login(viewer)
    response = client.post(f"/teams/{team.slug}/members/", {"username": "x", "role": "member"})
    assert response.status_code == 403
    event = AuditEvent.objects.get()
    assert (event.outcome, event.action, event.actor_id, event.team_id) == ("denied", "team.manage_members", viewer.pk, team.pk)
    assert audit_chain_verify().ok

