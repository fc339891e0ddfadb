"""audit_record_many appends a batch in order (on PostgreSQL with one binary COPY, hashing without
model instances): every event is stored as given, links to the one before it, and the chain verifies
from the stored rows. The rows it returns, when asked for, are the stored rows."""

import datetime
import decimal

import pytest

from governance.audit import PendingEvent, audit_chain_verify, audit_record, audit_record_many, compute_hash
from governance.models import AuditEvent
from portal import context

pytestmark = pytest.mark.django_db


def _events(team, actor) -> list[PendingEvent]:
    at = datetime.datetime(2026, 5, 4, 3, 2, 1, 123456, tzinfo=datetime.UTC)
    return [
        PendingEvent(action="allocation.place", target_type="scheduler.allocationrequest", target_id=i, team_id=team.pk,
                     changes={"state": ["pending", "placed"], "devices": i, "nodes": ["n-1", "n-2"], "borrowed": i % 2 == 0,
                              "planned_end": at + datetime.timedelta(seconds=i), "ratio": i / 3, "note": "Grüße \"quoted\"\n\t\\"})
        for i in range(1, 40)
    ] + [
        PendingEvent(action="allocation.release", target_type="scheduler.allocationrequest", target_id="7", team=team),
        PendingEvent(action="team.update", actor=actor, target_type="governance.team", target_id=team.pk, team=team,
                     outcome=AuditEvent.Outcome.DENIED, changes={"price": decimal.Decimal("1.50"), "nested": {"b": [1, None], "a": {}}}),
    ]


@pytest.mark.parametrize("returning", [True, False])
def test_a_bulk_append_stores_every_event_and_the_chain_verifies(team, owner, returning):
    audit_record(action="team.update", actor=owner, target=team, team=team, changes={"name": ["a", "b"]})
    meta = context.set_meta(context.RequestMeta(request_id="req-9", source_ip="10.1.2.3"))
    try:
        returned = audit_record_many(_events(team, owner), returning=returning)
    finally:
        context.reset(meta)
    stored = list(AuditEvent.objects.order_by("id"))
    assert len(stored) == 42
    for previous, event in zip(stored, stored[1:]):
        assert event.prev_hash == previous.hash
        assert compute_hash(event.chain_payload()) == event.hash
    placed = stored[1]
    assert (placed.action, placed.actor_id, placed.actor_label, placed.target_id, placed.team_id) == (
        "allocation.place", None, "system", "1", team.pk)
    assert (placed.source_ip, placed.request_id, placed.outcome) == ("10.1.2.3", "req-9", "success")
    assert placed.changes == {"state": ["pending", "placed"], "devices": 1, "nodes": ["n-1", "n-2"], "borrowed": False,
                              "planned_end": "2026-05-04T03:02:02.123Z", "ratio": 1 / 3, "note": "Grüße \"quoted\"\n\t\\"}
    assert stored[-2].changes == {} and stored[-2].target_id == "7"
    assert (stored[-1].actor_id, stored[-1].actor_label, stored[-1].outcome) == (owner.pk, owner.username, "denied")
    assert stored[-1].changes == {"price": "1.50", "nested": {"a": {}, "b": [1, None]}}
    if returning:
        assert [(r.pk, r.hash, r.prev_hash, r.changes) for r in returned] == [
            (r.pk, r.hash, r.prev_hash, r.changes) for r in stored[1:]]
    report = audit_chain_verify()
    assert report.ok and report.checked == 42


def test_events_prepared_before_another_append_link_to_the_chain_head_at_write_time(team, owner):
    from django.db import connection

    from governance.audit import audit_prepare, audit_record_prepared

    if connection.vendor != "postgresql":
        pytest.skip("the prepared bulk path is PostgreSQL's")
    prepared = audit_prepare(_events(team, owner))
    between = audit_record(action="team.update", actor=owner, target=team, team=team, changes={"name": ["a", "b"]})
    audit_record_prepared(prepared, returning=False)
    stored = list(AuditEvent.objects.order_by("id"))
    assert stored[0].pk == between.pk and stored[1].prev_hash == between.hash
    assert all(e.created_at >= between.created_at for e in stored[1:]), "time is taken under the chain's lock"
    report = audit_chain_verify()
    assert report.ok and report.checked == 42


def test_prepared_canonical_text_is_canonical_json_of_the_chain_payload(team, owner):
    # audit_prepare writes each event's canonical JSON piece by piece around the time and the
    # previous hash; put together it must be exactly what canonical_json gives for the payload
    # audit_chain_verify rebuilds from the stored row (here on SQLite too: no database needed).
    from governance.audit import audit_prepare, canonical_json

    meta = context.set_meta(context.RequestMeta(request_id='req "9" ✓', source_ip="10.1.2.3"))
    try:
        prepared = audit_prepare(_events(team, owner))
    finally:
        context.reset(meta)
    created_at, prev = "2026-05-04T03:02:01.123456+00:00", "ab" * 32
    assert len(prepared.parts) == 41
    for (before, middle, after), value, changes in zip(prepared.parts, prepared.values, prepared.changes):
        actor_id, label, token_id, action, target_type, target_id, team_id, outcome, _text = value
        payload = {"created_at": created_at, "actor_id": actor_id, "actor_label": label, "token_id": token_id,
                   "action": action, "target_type": target_type, "target_id": target_id, "team_id": team_id,
                   "source_ip": "10.1.2.3", "request_id": 'req "9" ✓', "outcome": outcome, "changes": changes,
                   "prev_hash": prev}
        assert f"{before}{created_at}{middle}{prev}{after}" == canonical_json(payload)
