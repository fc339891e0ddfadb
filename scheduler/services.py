"""The scheduler's writes: requests for GPUs, their release, reservations, and the scheduling pass.

Every function here is keyword-only, runs in one transaction, locks the rows whose state it changes,
and writes its audit events inside that transaction. Work for other processes (a pass, the
workspaces app's reactions) is sent only after commit. The one exception is the scheduling pass:
its allocations, preemption marks and audit events commit together, then the waiting requests'
queue facts (derived, advisory, rewritten by every pass) follow in a second transaction, under the
same pass lock, so placements reach the nodes without waiting for thousands of fact rows.

Lock order (PostgreSQL): rows first, the audit chain's advisory lock last. The chain lock is held
to commit, so a transaction that audits and THEN locks a request row can deadlock with a pass that
holds request rows and waits for the chain. Callers composing these services inside their own
transaction (workspaces) call them before their own audit_record.
"""

import contextlib
import datetime
import gc
import json
import logging
import math
import threading
import time
from dataclasses import dataclass, field

from django.db import connection, transaction
from django.db.models import Count, Q
from django.utils import timezone

from governance.access import require
from governance.audit import PendingEvent, audit_prepare, audit_record, audit_record_many, audit_record_prepared
from governance.models import Team, TeamPolicy, User
from portal.errors import Conflict, DomainError
from portal.tasks import enqueue
from scheduler import engine, signals
from scheduler.models import Allocation, AllocationRequest, GpuDevice, MigSlice, PriorityClass, Reservation, UsageLedger

log = logging.getLogger(__name__)

DEFAULT_MAX_DURATION_S = 8 * 3600
_PASS_LOCK_KEY = 0x73636864  # "schd": one advisory lock for the scheduling pass, cluster-wide
_process_pass_lock = threading.Lock()  # embedded mode (SQLite): one pass at a time in this process

TERMINAL_STATES = (AllocationRequest.State.CANCELLED, AllocationRequest.State.FINISHED)


def _schedule_pass_on_commit() -> None:
    from scheduler.tasks import schedule_pass

    enqueue(schedule_pass)


def _send_on_commit(signal, **kwargs) -> None:
    transaction.on_commit(lambda: signal.send(sender=AllocationRequest, **kwargs))


# --- inventory facts the request validation needs --------------------------------------------


def flavor_capacity(*, flavor: str, mig: bool) -> tuple[int, int]:
    """(devices of this flavor in the fleet, most on one node), counting nodes not confirmed gone.
    Whole GPUs in MIG mode are not whole-GPU capacity; slices of GPUs not in MIG mode are not slices."""
    if mig:
        qs = MigSlice.objects.filter(profile=flavor, gpu__mig_enabled=True, healthy=True,
                                     gpu__node__gone_confirmed_at__isnull=True).values("gpu__node_id")
        per_node = qs.annotate(n=Count("id")).values_list("n", flat=True)
    else:
        qs = GpuDevice.objects.filter(model=flavor, mig_enabled=False, healthy=True,
                                      node__gone_confirmed_at__isnull=True).values("node_id")
        per_node = qs.annotate(n=Count("id")).values_list("n", flat=True)
    counts = list(per_node)
    return sum(counts), max(counts, default=0)


# --- requests --------------------------------------------------------------------------------


def allocation_request_create(
    *,
    team: Team,
    user: User,
    flavor: str,
    count: int = 1,
    mig: bool = False,
    same_node: bool | None = None,
    nvlink_preferred: bool = True,
    priority: int = PriorityClass.INTERACTIVE,
    preemptible: bool = False,
    max_duration_s: int = DEFAULT_MAX_DURATION_S,
) -> AllocationRequest:
    """Precondition: `user` may use `team`'s GPUs. Queues a wish for GPUs; a pass places it after commit."""
    require(user, "team.use_gpus", team)
    flavor = (flavor or "").strip()
    errors = {}
    if not flavor:
        errors["flavor"] = "Choose a GPU model or MIG profile."
    if not isinstance(count, int) or count < 1:
        errors["count"] = "Ask for at least one GPU."
    if priority not in PriorityClass.values:
        errors["priority"] = f"Priority must be one of {sorted(PriorityClass.values)}."
    policy = TeamPolicy.objects.filter(team=team).first()
    max_hours = policy.max_duration_hours if policy else 72
    if not isinstance(max_duration_s, int) or max_duration_s < 60:
        errors["max_duration_s"] = "The maximum duration must be at least a minute."
    elif max_duration_s > max_hours * 3600:
        errors["max_duration_s"] = f"The team's policy allows at most {max_hours} hours."
    if errors:
        raise DomainError("The request is not valid.", code="invalid", fields=errors)

    total, per_node = flavor_capacity(flavor=flavor, mig=mig)
    kind = "MIG slices of profile" if mig else "GPUs of model"
    if total == 0:
        raise DomainError(f"The fleet has no {kind} {flavor}.", code="unknown_flavor", fields={"flavor": f"No {kind} {flavor} in the fleet."})
    if same_node is None:
        same_node = count <= per_node
    largest = per_node if same_node else total
    if count > largest:
        where = "on one node" if same_node else "in the whole fleet"
        raise DomainError(f"At most {largest} {kind} {flavor} exist {where}; {count} can never be placed.",
                          code="too_large", fields={"count": f"At most {largest} {where}."})

    with transaction.atomic():
        request = AllocationRequest.objects.create(
            team=team, user=user, flavor=flavor, mig=mig, count=count, same_node=same_node,
            nvlink_preferred=nvlink_preferred, priority=priority, preemptible=preemptible, max_duration_s=max_duration_s,
        )
        audit_record(action="allocation_request.create", actor=user, target=request, team=team, changes={
            "flavor": flavor, "mig": mig, "count": count, "same_node": same_node, "priority": int(priority),
            "preemptible": preemptible, "max_duration_s": max_duration_s,
        })
        _schedule_pass_on_commit()
    return request


def _release_live(request: AllocationRequest, *, reason: str, now: datetime.datetime) -> int:
    return Allocation.objects.filter(request_id=request.pk, released_at__isnull=True).update(
        released_at=now, release_reason=reason[:200])


def _end_request(request: AllocationRequest, *, state: str, reason: str) -> int:
    """Caller holds the request's row lock. Releases its live devices and ends it in `state`,
    clearing its queue facts. Returns how many devices were released."""
    now = timezone.now()
    released = _release_live(request, reason=reason, now=now)
    request.state = state
    request.ended_at = now
    request.pending_reasons = []
    request.queue_position_team = request.queue_position_global = None
    request.estimated_start = None
    request.save(update_fields=["state", "ended_at", "pending_reasons", "queue_position_team",
                                "queue_position_global", "estimated_start"])
    return released


def allocation_request_cancel(*, request: AllocationRequest, actor: User | None, reason: str) -> AllocationRequest:
    """Precondition: the request is pending or placed (cancelled/finished: nothing to do). Frees its devices."""
    with transaction.atomic():
        request = AllocationRequest.objects.select_for_update().get(pk=request.pk)
        if request.state in TERMINAL_STATES:
            return request
        before = request.state
        released = _end_request(request, state=AllocationRequest.State.CANCELLED, reason=reason or "cancelled")
        audit_record(action="allocation_request.cancel", actor=actor, target=request, team=request.team,
                     changes={"state": [before, request.state], "reason": reason, "released_devices": released})
        if released:
            _send_on_commit(signals.allocation_released, request_id=request.pk, reason=reason or "cancelled")
        _schedule_pass_on_commit()
    return request


def allocation_release(*, request: AllocationRequest, reason: str, actor: User | None = None) -> AllocationRequest:
    """Precondition: none (a finished or cancelled request is left as is). Releases every live
    allocation of the request in one transaction; a placed request becomes finished, a pending one cancelled."""
    with transaction.atomic():
        request = AllocationRequest.objects.select_for_update().get(pk=request.pk)
        if request.state in TERMINAL_STATES:
            # Still close anything live (a node confirmed gone after the request ended).
            stray = _release_live(request, reason=reason or "released", now=timezone.now())
            if stray:
                audit_record(action="allocation.release", actor=actor, target=request, team=request.team,
                             changes={"reason": reason, "released_devices": stray})
                _send_on_commit(signals.allocation_released, request_id=request.pk, reason=reason)
                _schedule_pass_on_commit()
            return request
        before = request.state
        ended = AllocationRequest.State.FINISHED if before == AllocationRequest.State.PLACED else AllocationRequest.State.CANCELLED
        released = _end_request(request, state=ended, reason=reason or "released")
        audit_record(action="allocation.release", actor=actor, target=request, team=request.team,
                     changes={"state": [before, request.state], "reason": reason, "released_devices": released})
        _send_on_commit(signals.allocation_released, request_id=request.pk, reason=reason)
        _schedule_pass_on_commit()
    return request


def allocation_request_extend(*, request: AllocationRequest, max_duration_s: int, actor: User | None) -> AllocationRequest:
    """Precondition: the request is pending or placed. Moves the planned end of its live allocations
    (what the engine uses to estimate start times and to backfill around reservations)."""
    if not isinstance(max_duration_s, int) or max_duration_s < 60:
        raise DomainError("The maximum duration must be at least a minute.", fields={"max_duration_s": "At least 60 seconds."})
    with transaction.atomic():
        request = AllocationRequest.objects.select_for_update().get(pk=request.pk)
        if request.state in TERMINAL_STATES:
            raise Conflict(f"Request #{request.pk} is {request.state}; it cannot be extended.", code="not_live")
        before = request.max_duration_s
        request.max_duration_s = max_duration_s
        request.save(update_fields=["max_duration_s"])
        for alloc in Allocation.objects.select_for_update().filter(request_id=request.pk, released_at__isnull=True):
            alloc.planned_end = alloc.started_at + datetime.timedelta(seconds=max_duration_s)
            alloc.save(update_fields=["planned_end"])
        audit_record(action="allocation_request.extend", actor=actor, target=request, team=request.team,
                     changes={"max_duration_s": [before, max_duration_s]})
        _schedule_pass_on_commit()
    return request


# --- advance reservations --------------------------------------------------------------------


def reservation_create(*, team: Team, flavor: str, count: int, starts_at: datetime.datetime, ends_at: datetime.datetime,
                       actor: User, note: str = "", mig: bool = False, perm: str = "fleet.manage") -> Reservation:
    """Precondition: `actor` has `perm` (platform admins: fleet.manage; the quota approval workflow
    reserving an approved future window passes quota.decide). Keeps `count` devices of `flavor`
    free for `team` during the window."""
    if perm not in ("fleet.manage", "quota.decide"):
        raise ValueError(f"reservation_create: unexpected perm {perm!r}")
    require(actor, perm)
    errors = {}
    if not isinstance(count, int) or count < 1:
        errors["count"] = "Reserve at least one GPU."
    if ends_at <= starts_at:
        errors["ends_at"] = "The window must end after it starts."
    elif ends_at <= timezone.now():
        errors["ends_at"] = "The window is already over."
    total, _ = flavor_capacity(flavor=flavor, mig=mig)
    if total == 0:
        errors["flavor"] = f"The fleet has no {flavor}."
    elif not errors.get("count") and count > total:
        errors["count"] = f"The fleet has only {total} {flavor}."
    if errors:
        raise DomainError("The reservation is not valid.", fields=errors)
    with transaction.atomic():
        overlapping = Reservation.objects.select_for_update().filter(flavor=flavor, starts_at__lt=ends_at, ends_at__gt=starts_at)
        held = sum(r.count for r in overlapping)
        if held + count > total:
            raise Conflict(f"Only {max(0, total - held)} {flavor} are not already reserved in that window.",
                           code="overbooked", fields={"count": f"At most {max(0, total - held)}."})
        reservation = Reservation.objects.create(team=team, flavor=flavor, count=count, starts_at=starts_at,
                                                 ends_at=ends_at, created_by=actor, note=note[:200])
        audit_record(action="reservation.create", actor=actor, target=reservation, team=team, changes={
            "flavor": flavor, "count": count, "starts_at": starts_at, "ends_at": ends_at, "note": note[:200]})
        _schedule_pass_on_commit()
    return reservation


def reservation_cancel(*, reservation: Reservation, actor: User) -> None:
    """Precondition: `actor` may manage the fleet. Removes the reservation (the audit event keeps its terms)."""
    require(actor, "fleet.manage")
    with transaction.atomic():
        row = Reservation.objects.select_for_update().filter(pk=reservation.pk).first()
        if row is None:
            return
        audit_record(action="reservation.cancel", actor=actor, target_type="scheduler.reservation", target_id=row.pk,
                     team=row.team, changes={
                         "flavor": row.flavor, "count": row.count, "starts_at": row.starts_at, "ends_at": row.ends_at})
        row.delete()
        _schedule_pass_on_commit()


# --- the scheduling pass ---------------------------------------------------------------------


@dataclass
class PassResult:
    skipped: bool = False
    placed: list[int] = field(default_factory=list)  # request ids
    preempting: list[tuple[int, datetime.datetime]] = field(default_factory=list)  # (victim request id, preempt_at)
    released: list[int] = field(default_factory=list)  # request ids released after their grace period
    waiting: int = 0
    devices_placed: int = 0
    waiting_rewritten: int = 0  # waiting rows whose reasons, positions or estimate changed
    snapshot_ms: float = 0.0
    decide_ms: float = 0.0
    write_ms: float = 0.0  # writes and commit
    total_ms: float = 0.0  # lock to committed allocations
    facts_ms: float = 0.0  # then the queue facts of waiting requests, in their own transaction
    steps_ms: dict = field(default_factory=dict)  # where the write time goes (the benchmark prints it)

    def summary(self) -> dict:
        return {"skipped": self.skipped, "placed": len(self.placed), "devices": self.devices_placed,
                "preempting": len(self.preempting), "released": len(self.released), "waiting": self.waiting, "rewritten": self.waiting_rewritten,
                "snapshot_ms": round(self.snapshot_ms, 1), "decide_ms": round(self.decide_ms, 1),
                "write_ms": round(self.write_ms, 1), "total_ms": round(self.total_ms, 1), "facts_ms": round(self.facts_ms, 1)}


@contextlib.contextmanager
def _gc_paused():
    """The cyclic garbage collector off for the pass (restored after, collecting nothing it would
    not collect later): a pass allocates a few hundred thousand short-lived, acyclic objects (rows,
    engine inputs, decisions), which set off full collections of the whole heap: 60-90 ms each,
    a fifth of a large pass, spent while the pass holds its locks. Reference counting frees them."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@contextlib.contextmanager
def _pass_lock(postgres: bool):
    """One pass at a time, cluster-wide: PostgreSQL's session-level advisory lock (held across the
    pass's two transactions, released even when the pass fails); a process lock in embedded mode
    (SQLite serialises writers anyway). Yields whether it was taken (False: a pass is running)."""
    if not postgres:
        if not _process_pass_lock.acquire(blocking=False):
            yield False
            return
        try:
            yield True
        finally:
            _process_pass_lock.release()
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [_PASS_LOCK_KEY])
        taken = bool(cursor.fetchone()[0])
    if not taken:
        yield False
        return
    try:
        yield True
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [_PASS_LOCK_KEY])


def schedule_pass_run(*, now: datetime.datetime | None = None) -> PassResult:
    """Precondition: none. Runs one pass if no other pass is running (else returns skipped=True).

    First transaction: releases allocations whose preemption grace ended, accounts usage for fair
    share, snapshots, decides, and writes every allocation, preemption mark and audit event of the
    pass together. Second transaction, right after: why each request still waits, its queue
    positions and estimated start (derived facts, for the rows still pending; if it fails, the
    placements stand and the next pass writes them). Then, the lock released, the workspaces app
    is told what was placed, preempted and released (signals)."""
    postgres = connection.vendor == "postgresql"
    started = time.perf_counter()
    with _pass_lock(postgres) as taken:
        if not taken:
            return PassResult(skipped=True)
        committed_at: list[float] = []
        with _gc_paused():
            with transaction.atomic():
                # Registered first, so it runs right after COMMIT, before the signals' receivers.
                transaction.on_commit(lambda: committed_at.append(time.perf_counter()))
                now = now or timezone.now()
                result = PassResult()
                # The audit chain's lock is taken last, by the single audit write at the end of the pass:
                # taken earlier, it would be held while waiting for a row another service has locked
                # while that service waits for the chain (a deadlock).
                events: list[PendingEvent] = []
                result.released = _release_preempted(now, events)
                _usage_account(now)
                from scheduler.snapshot import snapshot_build

                t0 = time.perf_counter()
                result.steps_ms["before snapshot"] = (t0 - started) * 1000  # lock, preemptions due, usage
                snap = snapshot_build(now=now)
                t1 = time.perf_counter()
                decision = engine.decide(snap.engine)
                t2 = time.perf_counter()
                _pass_write(decision, snap, result, events)
                written = time.perf_counter()
            done = committed_at[0] if committed_at else time.perf_counter()
            result.steps_ms["commit"] = (done - written) * 1000
            result.snapshot_ms = (t1 - t0) * 1000
            result.decide_ms = (t2 - t1) * 1000
            result.write_ms = (done - t2) * 1000  # writes and commit
            result.total_ms = (done - started) * 1000
            try:
                with transaction.atomic():
                    changed = _waiting_changes(decision)
                    result.waiting_rewritten = len(changed)
                    _write_waiting(changed)
            except Exception:  # the placements are committed: log, and let the next pass write the facts
                log.exception("schedule pass: writing the queue facts failed; the next pass rewrites them")
            result.facts_ms = (time.perf_counter() - done) * 1000
    # What the workspaces app reacts to (start, warn, stop), sent once the pass's writes are
    # committed and its lock released: right away outside a transaction, else when it commits.
    transaction.on_commit(lambda: _signal_pass(result))
    if result.placed or result.preempting or result.released:
        log.info("schedule pass: %s", result.summary())
    return result


def _signal_pass(result: PassResult) -> None:
    for request_id in result.released:
        signals.allocation_released.send(sender=AllocationRequest, request_id=request_id, reason="preempted")
    if result.placed:
        signals.allocation_placed.send(sender=AllocationRequest, request_ids=list(result.placed))
    for request_id, at in result.preempting:
        signals.allocation_preempting.send(sender=AllocationRequest, request_id=request_id, preempt_at=at)


def _release_preempted(now: datetime.datetime, events: list[PendingEvent]) -> list[int]:
    """Victims whose grace period is over lose their devices now (their workspaces were warned)."""
    due = sorted(set(Allocation.objects.filter(released_at__isnull=True, preempt_at__lte=now).values_list("request_id", flat=True)))
    if not due:
        return []
    rows = list(AllocationRequest.objects.select_for_update().filter(pk__in=due).values_list("id", "team_id", "state"))
    Allocation.objects.filter(request_id__in=due, released_at__isnull=True).update(released_at=now, release_reason="preempted")
    live_ids = [i for i, _t, state in rows if state not in TERMINAL_STATES]
    AllocationRequest.objects.filter(pk__in=live_ids).update(state=AllocationRequest.State.FINISHED, ended_at=now)
    events.extend(PendingEvent(action="allocation.release", target_type="scheduler.allocationrequest", target_id=i,
                               team_id=t, changes={"reason": "preempted", "state": [state, AllocationRequest.State.FINISHED]})
                  for i, t, state in rows)
    return due


def _usage_account(now: datetime.datetime) -> None:
    """Fair share's input: per team and flavor, GPU-seconds decayed by the half-life, plus the
    device-seconds held since the ledger was last brought to `now` (live or released since)."""
    from scheduler.snapshot import decay, half_life_seconds, rows_of, seconds_of, ts

    postgres = connection.vendor == "postgresql"
    ledgers = {(t, f): (s, at) for t, f, s, at in UsageLedger.objects.values_list("team_id", "flavor", "gpu_seconds", "decayed_at")}
    horizon = now - datetime.timedelta(seconds=4 * half_life_seconds())
    since = min([at for _s, at in ledgers.values()], default=horizon)
    since = max(since, horizon)
    # In epoch seconds (PostgreSQL computes them for the rows): every live allocation is read on
    # every pass, and loading its timestamps as datetimes was a good part of a pass's time.
    now_s, horizon_s = now.timestamp(), horizon.timestamp()
    ledger_s = {key: at.timestamp() for key, (_v, at) in ledgers.items()}
    added: dict[tuple[int, str], float] = {}
    rows = Allocation.objects.filter(Q(released_at__isnull=True) | Q(released_at__gt=since), started_at__lt=now).annotate(
        started_s=seconds_of("started_at", postgres), released_s=seconds_of("released_at", postgres)).values_list(
        "team_id", "gpu__model", "mig_slice__profile", "started_s", "released_s")
    for team_id, model, profile, started_at, released_at in rows_of(rows, postgres):
        key = (team_id, model or profile)
        started_at = ts(started_at)
        from_ = max(started_at, ledger_s.get(key, horizon_s))
        to = min(ts(released_at) if released_at is not None else now_s, now_s)
        if to > from_:
            added[key] = added.get(key, 0.0) + (to - from_)
    updates = []
    for key in set(ledgers) | set(added):
        value, at = ledgers.get(key, (0.0, now))
        updates.append(UsageLedger(team_id=key[0], flavor=key[1], gpu_seconds=decay(value, (now - at).total_seconds()) + added.get(key, 0.0),
                                   decayed_at=now))
    if updates:
        UsageLedger.objects.bulk_create(updates, update_conflicts=True, unique_fields=["team", "flavor"],
                                        update_fields=["gpu_seconds", "decayed_at"], batch_size=1000)


def _dt(value: float | None) -> datetime.datetime | None:
    return datetime.datetime.fromtimestamp(value, tz=datetime.UTC) if value is not None else None


def _pass_write(decision: engine.Decision, snap, result: PassResult, events: list[PendingEvent] | None = None) -> None:
    """Write the decision's allocations, preemption marks and audit events (the chain's lock goes
    last, see schedule_pass_run). The queue facts of waiting requests are not written here."""
    events = [] if events is None else events
    clock = [time.perf_counter()]
    postgres = connection.vendor == "postgresql"

    def step(name: str) -> None:
        t = time.perf_counter()
        result.steps_ms[name] = (t - clock[0]) * 1000
        clock[0] = t

    now = snap.now
    node_names = {n.id: n.name for n in snap.engine.nodes}
    victims = {}
    for v in decision.preemptions:
        victims.setdefault(v.request_id, v)
    preempt_at = now + datetime.timedelta(seconds=snap.engine.grace_s)
    built: dict = {}

    def build(placements: list[engine.Placement]) -> None:
        """Allocation rows and every audit event of the pass, prepared for the chain (the costly
        encoding) on PostgreSQL."""
        rows = []
        pass_events = list(events)
        for p in placements:
            end = _dt(p.planned_end)
            for key, node_id in zip(p.keys, p.node_ids):
                rows.append((p.request_id, p.team_id, node_id, key if key > 0 else None, -key if key < 0 else None,
                             p.borrowed, p.preemptible, now, end))
            pass_events.append(PendingEvent(action="allocation.place", target_type="scheduler.allocationrequest",
                                            target_id=p.request_id, team_id=p.team_id, changes={
                                                "state": ["pending", "placed"], "devices": len(p.keys),
                                                "nodes": sorted({node_names[n] for n in p.node_ids}), "borrowed": p.borrowed,
                                                "preemptible": p.preemptible, "planned_end": end}))
        for v in victims.values():
            pass_events.append(PendingEvent(action="allocation.preempt", target_type="scheduler.allocationrequest",
                                            target_id=v.request_id, team_id=v.team_id,
                                            changes={"preempt_at": preempt_at, "for_request": v.for_request_id}))
        built.update(placements=placements, rows=rows, events=pass_events,
                     prepared=audit_prepare(pass_events) if postgres and len(pass_events) > 1 else None)
        step("build")

    # A request cancelled since the snapshot must not be placed: only rows still pending become
    # placed (the UPDATE locks them), and only those get allocations. The rows and events are built
    # meanwhile (on PostgreSQL while the server runs that UPDATE: see _mark_placed), the events
    # encoded for the audit chain too (the costly part of appending them; they carry no actor, so
    # that needs no query while the UPDATE is in flight).
    still_pending = _mark_placed([p.request_id for p in decision.placements], now,
                                 meanwhile=lambda: build(decision.placements))
    step("placed")  # on PostgreSQL: what was left of the UPDATE once the build was done
    if not built or len(still_pending) != len(built["placements"]):
        build([p for p in decision.placements if p.request_id in still_pending])  # rare: some were cancelled
    _insert_allocations(built["rows"])
    step("allocations")

    if victims:
        Allocation.objects.filter(request_id__in=list(victims), released_at__isnull=True, preempt_at__isnull=True).update(preempt_at=preempt_at)
        result.preempting = [(v.request_id, preempt_at) for v in victims.values()]
    if built["prepared"] is not None:
        audit_record_prepared(built["prepared"], returning=False)
    else:
        audit_record_many(built["events"], returning=False)
    step("audit")

    result.placed = [p.request_id for p in built["placements"]]
    result.devices_placed = len(built["rows"])
    result.waiting = len(decision.waiting)


def _waiting_changes(decision: engine.Decision) -> list[tuple]:
    """The waiting requests whose shown facts change (tuples for _write_waiting)."""
    from scheduler.snapshot import queue_facts_shown

    changed = []
    texts: dict[tuple, str] = {}  # identical reason lists (common in a warm queue) are encoded once
    shown = queue_facts_shown()
    for request_id, w in decision.waiting.items():
        key = tuple(w.reasons)
        reasons = texts.get(key)
        if reasons is None:
            reasons = texts[key] = reasons_json(w.reasons)
        # To the next whole minute: precise enough to show, and a pass does not rewrite every
        # waiting row only because the clock moved.
        eta = math.ceil(w.estimated_start / 60) * 60 if w.estimated_start is not None else None
        row = (reasons, w.position_team, w.position_global, eta)
        if shown.get(request_id) != row:
            changed.append((request_id, *row))
    return changed


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def reasons_json(reasons: list[tuple[str, str]]) -> str:
    """Pending reasons as the JSON text PostgreSQL's jsonb prints back (the snapshot compares this
    text with the stored one; a difference only costs a rewrite). The text json.dumps gives for
    [{"code": ..., "message": ...}, ...] with ensure_ascii=False, written out: a cold pass encodes
    a few thousand distinct lists (the messages carry counts)."""
    return "[" + ", ".join(f'{{"code": {_json_str(code)}, "message": {_json_str(message)}}}'
                           for code, message in reasons) + "]"


_json_str = json.encoder.encode_basestring  # a str as JSON, as json.dumps(ensure_ascii=False) writes it


def _mark_placed(request_ids: list[int], now: datetime.datetime, meanwhile=None) -> set[int]:
    """Placed: the requests among `request_ids` still pending (locked by the update). Returns their ids.
    On PostgreSQL the UPDATE is sent in pipeline mode and `meanwhile()` (client work that needs
    no database) runs while the server executes it: the two take about as long, and the machine
    has cores for both."""
    if not request_ids:
        return set()
    if connection.vendor == "postgresql":
        table = AllocationRequest._meta.db_table
        with connection.cursor() as cursor:
            with connection.connection.pipeline() as pipeline:
                cursor.cursor.execute(
                    f"UPDATE {table} SET state = %s, placed_at = %s, pending_reasons = '[]'::jsonb, queue_position_team = NULL, "
                    f"queue_position_global = NULL, estimated_start = NULL WHERE id = ANY(%s::bigint[]) AND state = %s RETURNING id",
                    [AllocationRequest.State.PLACED, now, request_ids, AllocationRequest.State.PENDING])
                if meanwhile is not None:
                    meanwhile()
                pipeline.sync()
                return {row[0] for row in cursor.cursor.fetchall()}
    still_pending: set[int] = set()
    for chunk in _chunks(request_ids, 5000):
        still_pending.update(AllocationRequest.objects.select_for_update().filter(
            pk__in=chunk, state=AllocationRequest.State.PENDING).values_list("id", flat=True))
    for chunk in _chunks(sorted(still_pending), 5000):
        AllocationRequest.objects.filter(pk__in=chunk).update(
            state=AllocationRequest.State.PLACED, placed_at=now, pending_reasons=[], queue_position_team=None,
            queue_position_global=None, estimated_start=None)
    return still_pending


def _write_waiting(changed: list[tuple]) -> None:
    """Why each request waits, its positions and estimated start (tuples: id, reasons JSON text,
    position in team, global position, estimate in epoch seconds). On PostgreSQL: COPY into a
    temporary table and one UPDATE joined to it (a request cancelled since the snapshot is left
    alone); several times faster than an UPDATE over unnest()ed array parameters, whose jsonb[]
    literal the server parses as one value. bulk_update elsewhere (SQLite serialises writers)."""
    if not changed:
        return
    if connection.vendor == "postgresql":
        table = AllocationRequest._meta.db_table
        with connection.cursor() as cursor:
            # Kept for the session and emptied at commit: creating and dropping it in every pass
            # wrote its catalog rows each time. Binary COPY (reasons as text, cast by the UPDATE).
            cursor.execute("CREATE TEMP TABLE IF NOT EXISTS scheduler_waiting_facts (id bigint, reasons text, pt integer, "
                           "pg integer, eta float8) ON COMMIT DELETE ROWS")
            # Empty already, unless an outer transaction (a test) ran an earlier pass without committing.
            cursor.execute("DELETE FROM scheduler_waiting_facts")
            with cursor.cursor.copy("COPY scheduler_waiting_facts (id, reasons, pt, pg, eta) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(("int8", "text", "int4", "int4", "float8"))
                for row in changed:
                    copy.write_row(row)
            # A temporary table has no statistics until analysed: without them the planner may
            # join it by a nested loop over the request table (seconds instead of milliseconds).
            cursor.execute("ANALYZE scheduler_waiting_facts")
            cursor.execute(
                f"UPDATE {table} AS r SET pending_reasons = v.reasons::jsonb, queue_position_team = v.pt, "
                f"queue_position_global = v.pg, estimated_start = to_timestamp(v.eta) "
                f"FROM scheduler_waiting_facts AS v WHERE r.id = v.id AND r.state = %s",
                [AllocationRequest.State.PENDING])
        return
    objs = [AllocationRequest(pk=request_id, pending_reasons=json.loads(reasons), queue_position_team=pos_team,
                              queue_position_global=pos_global, estimated_start=_dt(eta))
            for request_id, reasons, pos_team, pos_global, eta in changed]
    AllocationRequest.objects.bulk_update(objs, ["pending_reasons", "queue_position_team", "queue_position_global",
                                                 "estimated_start"], batch_size=500)


_ALLOCATION_COLUMNS = ("request_id", "team_id", "node_id", "gpu_id", "mig_slice_id", "borrowed", "preemptible",
                       "started_at", "planned_end")
_ALLOCATION_TYPES = ("int8", "int8", "int8", "int8", "int8", "bool", "bool", "timestamptz", "timestamptz", "text")


def _insert_allocations(rows: list[tuple]) -> None:
    """All of a pass's allocations (tuples in _ALLOCATION_COLUMNS order) in one statement: COPY on
    PostgreSQL (the partial unique indexes still refuse a second live allocation of a device),
    bulk_create elsewhere. Binary COPY: psycopg's text format spends most of its time writing the
    two timestamps of each row (~3x slower for a pass's 4,000 rows)."""
    if not rows:
        return
    if connection.vendor != "postgresql":
        Allocation.objects.bulk_create([Allocation(**dict(zip(_ALLOCATION_COLUMNS, row))) for row in rows], batch_size=2000)
        return
    table = Allocation._meta.db_table
    columns = ", ".join(_ALLOCATION_COLUMNS + ("release_reason",))
    with connection.cursor() as cursor:
        with cursor.cursor.copy(f"COPY {table} ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(_ALLOCATION_TYPES)
            for row in rows:
                copy.write_row(row + ("",))
