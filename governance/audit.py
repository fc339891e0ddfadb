"""The audit trail: one way to write an event (audit_record), one way to check the chain.

Every state-changing service calls audit_record inside its own transaction, so the event and the
change commit together or not at all. Appends are serialised (a PostgreSQL advisory lock held to
commit; SQLite's IMMEDIATE transactions serialise writers anyway), so each event links to the one
committed before it.
"""

import datetime
import hashlib
import ipaddress
import json
from dataclasses import dataclass

from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from django.utils import timezone
from psycopg.types.json import Jsonb

from governance.models import ApiToken, AuditEvent, Team, User
from portal import context

GENESIS_HASH = "0" * 64
_CHAIN_LOCK_KEY = 0x61756469  # "audi": one advisory lock for the whole chain


# One encoder of each kind, made once: json.dumps(..., cls=...) builds a new encoder per call, and
# a pass encodes thousands of events. The same output as json.dumps with these arguments.
_CANONICAL = DjangoJSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_STORED = DjangoJSONEncoder()  # json.dumps(value, cls=DjangoJSONEncoder): the changes' stored JSON text


def canonical_json(payload: dict) -> str:
    return _CANONICAL.encode(payload)


def compute_hash(payload: dict) -> str:
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def _json_safe_text(value) -> tuple:
    """(what the JSON column will give back, so the hash computed now matches a later read; its
    JSON text, which a bulk COPY stores: encoded once)."""
    text = _STORED.encode(value)
    return json.loads(text), text


def diff(before: dict, after: dict) -> dict:
    """{"field": [old, new]} for the fields that changed."""
    keys = set(before) | set(after)
    return {k: [before.get(k), after.get(k)] for k in sorted(keys) if before.get(k) != after.get(k)}


@dataclass
class PendingEvent:
    action: str
    actor: User | None = None
    target_type: str = ""
    target_id: str = ""
    team: Team | None = None
    team_id: int | None = None
    outcome: str = AuditEvent.Outcome.SUCCESS
    changes: dict | None = None


def _lock_chain() -> str:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_CHAIN_LOCK_KEY])
    last = AuditEvent.objects.order_by("-id").values_list("hash", flat=True).first()
    return last or GENESIS_HASH


def _actor_label(actor: User | None, token_id: int | None) -> str:
    if actor is None:
        return "system"
    if token_id:
        key_id = ApiToken.objects.filter(pk=token_id).values_list("key_id", flat=True).first() or "?"
        return f"token:{key_id} ({actor.username})"
    return actor.username


_FIELDS = None  # AuditEvent's concrete fields' attnames, in the order Model.__init__ takes positional values


def _build(event: PendingEvent, prev_hash: str, meta: context.RequestMeta, now: datetime.datetime) -> AuditEvent:
    return _build_with_text(event, prev_hash, meta, now)[0]


def _build_with_text(event: PendingEvent, prev_hash: str, meta: context.RequestMeta,
                     now: datetime.datetime) -> tuple[AuditEvent, str]:
    """The event's row with its hash, and the JSON text of its changes. Built from positional values
    (Model.__init__'s fast path: a pass audits thousands of placements at once)."""
    global _FIELDS
    if _FIELDS is None:
        _FIELDS = [f.attname for f in AuditEvent._meta.concrete_fields]
    token_id = meta.token_id if event.actor is not None else None
    changes, changes_text = _json_safe_text(event.changes or {})
    values = {
        "id": None,
        "created_at": now,
        "actor_id": event.actor.pk if event.actor is not None else None,
        "actor_label": _actor_label(event.actor, token_id),
        "token_id": token_id,
        "action": event.action,
        "target_type": event.target_type,
        "target_id": str(event.target_id) if event.target_id != "" else "",
        "team_id": event.team.pk if event.team is not None else event.team_id,
        "source_ip": meta.source_ip,
        "request_id": meta.request_id,
        "outcome": event.outcome,
        "changes": changes,
        "prev_hash": prev_hash,
        "hash": "",
    }
    row = AuditEvent(*[values[name] for name in _FIELDS])
    if event.actor is not None:
        row.actor = event.actor
    row.hash = compute_hash(row.chain_payload())
    return row, changes_text


def audit_record(
    *,
    action: str,
    actor: User | None,
    target=None,
    target_type: str = "",
    target_id: str | int = "",
    team: Team | None = None,
    outcome: str = AuditEvent.Outcome.SUCCESS,
    changes: dict | None = None,
) -> AuditEvent:
    """Append one event. `target` (a model instance) fills target_type/target_id. Call inside the
    transaction of the change it records."""
    if target is not None:
        target_type = target_type or target._meta.label_lower
        target_id = target.pk
    event = PendingEvent(action=action, actor=actor, target_type=target_type, target_id=target_id,
                         team=team, outcome=outcome, changes=changes)
    return audit_record_many([event])[0]


def audit_record_many(events: list[PendingEvent], *, returning: bool = True) -> list[AuditEvent]:
    """Append several events in order with one lock and one insert (a scheduling pass placing
    thousands of devices). `returning=False`: the caller does not need the rows back, and on
    PostgreSQL none is built (returns [])."""
    if not events:
        return []
    if len(events) > 1 and connection.vendor == "postgresql":
        return audit_record_prepared(audit_prepare(events), returning=returning)
    with transaction.atomic():
        prev = _lock_chain()
        meta = context.current()
        now = timezone.now()
        rows = []
        for event in events:
            row = _build(event, prev, meta, now)
            rows.append(row)
            prev = row.hash
        if len(rows) == 1:
            rows[0].save()
        else:
            AuditEvent.objects.bulk_create(rows, batch_size=1000)
    return rows


_COPY_COLUMNS = ("id", "created_at", "actor_id", "actor_label", "token_id", "action", "target_type", "target_id",
                 "team_id", "source_ip", "request_id", "outcome", "changes", "prev_hash", "hash")
_COPY_TYPES = ("int8", "timestamptz", "int8", "text", "int8", "text", "text", "text",
               "int8", "inet", "text", "text", "jsonb", "text", "text")


@dataclass
class PreparedEvents:
    """Events encoded ahead of the chain's lock (audit_prepare): each event's canonical JSON is
    complete but for its time and its link to the previous event, which only the chain's head
    (read under the lock) decides. `parts[i]` = the text before the time, between the time and
    the previous hash, and after it; `values[i]` = the stored columns but id, time and hashes."""

    meta: context.RequestMeta
    parts: list[tuple[str, str, str]]
    values: list[tuple]
    changes: list  # the changes as the JSON column gives them back (for returned rows)


def _encode_value(value) -> str:
    """One value as canonical_json writes it inside an object (the common scalars without the
    encoder's per-call overhead)."""
    if value is None:
        return "null"
    if type(value) is int:
        return int.__repr__(value)
    if type(value) is str:
        return _encode_str(value)
    return _CANONICAL.encode(value)


_encode_str = json.encoder.encode_basestring  # a str as JSON with ensure_ascii=False, as canonical_json writes it


def audit_prepare(events: list[PendingEvent]) -> PreparedEvents:
    """The expensive part of appending `events` (encoding, canonical JSON), done without the chain's
    lock: a scheduling pass prepares its events while the database runs its other writes. The
    events keep the request context of this call; pass the result to audit_record_prepared in the
    same transaction. PostgreSQL only (the bulk path).

    Each event's canonical JSON (canonical_json of AuditEvent.chain_payload(): sorted keys, no
    spaces) is written key by key in that sorted order, which puts the time and the previous hash,
    plain strings needing no escapes, between three fixed parts; the repeated fields of a batch
    (action, actor, request, target type) are encoded once."""
    meta = context.current()
    labels: dict[tuple, str] = {}
    heads: dict[tuple, str] = {}
    middles: dict[str, str] = {}
    tail_fixed = f',"request_id":{_encode_value(meta.request_id)},"source_ip":{_encode_value(meta.source_ip)},"target_id":'
    parts, values, changes_list = [], [], []
    for event in events:
        actor = event.actor
        actor_id = actor.pk if actor is not None else None
        token_id = meta.token_id if actor is not None else None
        label = labels.get((actor_id, token_id))
        if label is None:
            label = labels[(actor_id, token_id)] = _actor_label(actor, token_id)
        target_id = str(event.target_id) if event.target_id != "" else ""
        team_id = event.team.pk if event.team is not None else event.team_id
        changes, text = _json_safe_text(event.changes or {})
        head = heads.get((event.action, actor_id, label))
        if head is None:
            head = heads[(event.action, actor_id, label)] = (
                f'{{"action":{_encode_value(event.action)},"actor_id":{_encode_value(actor_id)},'
                f'"actor_label":{_encode_value(label)},"changes":')
        middle = middles.get(event.outcome)
        if middle is None:
            middle = middles[event.outcome] = f'","outcome":{_encode_value(event.outcome)},"prev_hash":"'
        before = f'{head}{_CANONICAL.encode(changes)},"created_at":"'
        after = (f'"{tail_fixed}{_encode_value(target_id)},"target_type":{_encode_value(event.target_type)},'
                 f'"team_id":{_encode_value(team_id)},"token_id":{_encode_value(token_id)}}}')
        parts.append((before, middle, after))
        values.append((actor_id, label, token_id, event.action, event.target_type, target_id, team_id,
                       event.outcome, Jsonb(text, str)))
        changes_list.append(changes)
    return PreparedEvents(meta=meta, parts=parts, values=values, changes=changes_list)


def audit_record_prepared(prepared: PreparedEvents, *, returning: bool = True) -> list[AuditEvent]:
    """Append prepared events (audit_prepare) with one lock and a binary COPY; each row's hash is
    the SHA-256 of the same canonical JSON AuditEvent.chain_payload() gives for the stored row
    (audit_chain_verify recomputes it from there; tests/governance/test_audit_record_many.py checks
    bulk-written events verify). Ids are taken from the table's sequence first, in chain order,
    so `id` order is the chain's order (the chain lock is held: nobody else appends)."""
    if not prepared.parts:
        return []
    table = AuditEvent._meta.db_table
    meta = prepared.meta
    source_ip = meta.source_ip
    inet = ipaddress.ip_address(source_ip) if source_ip else None  # binary inet takes an address object
    fields = None
    rows = []
    sha256 = hashlib.sha256
    with transaction.atomic():
        prev = _lock_chain()
        now = timezone.now()
        created_at = now.astimezone(datetime.UTC).isoformat(timespec="microseconds")
        with connection.cursor() as cursor:
            cursor.execute("SELECT nextval(pg_get_serial_sequence(%s, 'id')) FROM generate_series(1, %s)",
                           [table, len(prepared.parts)])
            ids = sorted(i for (i,) in cursor.fetchall())
            with cursor.cursor.copy(f"COPY {table} ({', '.join(_COPY_COLUMNS)}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(_COPY_TYPES)
                for (before, middle, after), value, changes, pk in zip(prepared.parts, prepared.values, prepared.changes, ids):
                    digest = sha256(f"{before}{created_at}{middle}{prev}{after}".encode()).hexdigest()
                    actor_id, label, token_id, action, target_type, target_id, team_id, outcome, text = value
                    copy.write_row((pk, now, actor_id, label, token_id, action, target_type, target_id,
                                    team_id, inet, meta.request_id, outcome, text, prev, digest))
                    if returning:
                        if fields is None:
                            fields = [f.attname for f in AuditEvent._meta.concrete_fields]
                        values = {"id": pk, "created_at": now, "actor_id": actor_id, "actor_label": label, "token_id": token_id,
                                  "action": action, "target_type": target_type, "target_id": target_id,
                                  "team_id": team_id, "source_ip": source_ip, "request_id": meta.request_id,
                                  "outcome": outcome, "changes": changes, "prev_hash": prev, "hash": digest}
                        row = AuditEvent(*[values[name] for name in fields])
                        row._state.adding = False
                        row._state.db = connection.alias
                        rows.append(row)
                    prev = digest
    return rows


def audit_denied(*, action: str, actor: User | None, target=None, target_type: str = "", target_id: str | int = "",
                 team: Team | None = None, reason: str = "") -> None:
    """Record a refused attempt (a 403) in its own transaction: the request itself changes nothing."""
    with transaction.atomic():
        audit_record(action=action, actor=actor if (actor and actor.is_authenticated) else None, target=target,
                     target_type=target_type, target_id=target_id, team=team,
                     outcome=AuditEvent.Outcome.DENIED, changes={"reason": reason} if reason else None)


@dataclass
class ChainReport:
    ok: bool
    checked: int
    first_bad_id: int | None = None
    problem: str = ""


def audit_chain_verify(*, batch: int = 5000) -> ChainReport:
    """Recompute every hash in id order and check each link. Reads in batches (constant memory)."""
    prev = GENESIS_HASH
    checked = 0
    last_id = 0
    while True:
        rows = list(AuditEvent.objects.filter(id__gt=last_id).order_by("id")[:batch])
        if not rows:
            return ChainReport(ok=True, checked=checked)
        for row in rows:
            if row.prev_hash != prev:
                return ChainReport(ok=False, checked=checked, first_bad_id=row.id, problem="link broken: prev_hash does not match the previous event")
            if compute_hash(row.chain_payload()) != row.hash:
                return ChainReport(ok=False, checked=checked, first_bad_id=row.id, problem="content changed: hash does not match the event")
            prev = row.hash
            checked += 1
            last_id = row.id
