"""The scheduling engine: a pure function from a snapshot to a decision.

No database, no clock, no settings: `decide(snapshot)` reads plain dataclasses (built by
scheduler/snapshot.py in a few queries, or by tests and the benchmark directly) and returns which
requests get which devices, which allocations are chosen as preemption victims, and, for every
request that still waits, why (ranked), its queue positions and an estimated start.

What it does, in order:
1. Queue order: requests within their team's quota before borrowing ones. Within quota: priority
   class, then weighted fair share (decayed GPU-seconds used, plus what the team holds now, per
   granted GPU), then age. Borrowing (sharing out idle capacity, as Kueue's fair sharing does between
   cohorts): fair share first, then priority, then age. Then id. The same snapshot in any row order
   gives the same decision (everything is sorted by ids, never by input position).
2. Placement, best fit: the node left with the fewest free devices of the flavor; among those,
   one where an NVLink group holds the whole set; one node when required.
3. The first request of each flavor that cannot start gets a shadow reservation: the devices (and
   the time) it will get from the planned ends of live allocations. Later requests are backfilled
   onto those devices only if they end before that time, so backfill never delays it. Requests
   ahead of it keep off the node it waits for whenever another node fits them (draining for a
   large request: else small work placed ahead of it every pass refills that node for days).
4. A within-quota request that cannot be placed may preempt: first borrowed allocations (teams
   beyond their grants), then preemptible allocations of lower priority; never a non-preemptible
   within-quota one, never one younger than the minimum runtime. A borrowing request may reclaim
   (Run:ai/KAI's reclaim) only borrowed allocations of no higher priority whose team would still
   stand above the borrower in fair share after the move (no ping-pong); when the borrowable pool
   is used up, victims on any node may hand back the borrowed devices it needs; `fair_reclaim=False`
   turns that off. The fewest victims that free a fitting set on one node are chosen; they get
   `preempt_at = now + grace` and are released by a later pass.
5. Advance reservations hold chosen devices for a team during a window: others may use them only
   with work that ends before the window starts.
6. MIG: a GPU in MIG mode is offered only as slices (flavor = profile), a GPU not in MIG mode only
   whole; a whole GPU is never offered while any slice of it is live, nor a slice while its GPU is.
7. Every request left waiting gets ranked reasons (REASON_CODES), told from the pass's final state,
   its positions in its team's and the global queue, and an estimated start: the shadow time for
   the first blocked request of a flavor, the grace period's end when preempting, the team's own
   planned ends when waiting for quota, else a fluid estimate from the flavor's planned ends.

Times are float seconds (epoch); device keys are ints: a GPU's id for a whole GPU, minus the slice
id for a MIG slice.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, insort
from dataclasses import dataclass, field

INF = float("inf")
DEFAULT_DURATION_S = 8 * 3600

# Pending reason codes, in the order they are ranked when several apply.
PREEMPTION_IN_PROGRESS = "preemption_in_progress"
WAITING_FOR_QUOTA = "waiting_for_quota"
BLOCKED_BY_POLICY = "blocked_by_policy"
NO_CAPACITY_TOGETHER = "no_capacity_together"
NEEDS_ONE_NODE = "needs_one_node"
RESERVED = "reserved"
NODE_DRAINING = "node_draining"
QUEUED_BEHIND = "queued_behind"
REASON_CODES = (PREEMPTION_IN_PROGRESS, WAITING_FOR_QUOTA, BLOCKED_BY_POLICY, NO_CAPACITY_TOGETHER, NEEDS_ONE_NODE,
                RESERVED, NODE_DRAINING, QUEUED_BEHIND)

READY, DRAINING, DOWN = "ready", "draining", "down"


# --- input ----------------------------------------------------------------------------------
# Plain slotted dataclasses, never changed by the engine. Not frozen: a frozen dataclass costs four
# times as much to build, and a large pass builds some 15,000 of them.


@dataclass(slots=True)
class NodeIn:
    id: int
    name: str
    state: str = READY


@dataclass(slots=True)
class DeviceIn:
    key: int  # GPU id (whole GPU) or -slice id (MIG slice)
    node_id: int
    flavor: str  # GPU model, or MIG profile for a slice
    mig: bool = False
    group: str = ""  # NVLink group; "" when none
    parent: int = 0  # the GPU id: its own for a whole GPU, the parent's for a slice
    index: int = 0


@dataclass(slots=True)
class AllocIn:
    id: int
    request_id: int
    team_id: int
    key: int
    node_id: int
    flavor: str
    borrowed: bool = False
    preemptible: bool = False
    priority: int = 100
    started_at: float = 0.0
    planned_end: float | None = None
    preempt_at: float | None = None


@dataclass(slots=True)
class RequestIn:
    id: int
    team_id: int
    flavor: str
    count: int = 1
    mig: bool = False
    same_node: bool = True
    nvlink_preferred: bool = True
    priority: int = 100
    preemptible: bool = False
    max_duration_s: int = DEFAULT_DURATION_S
    created_at: float = 0.0


@dataclass(slots=True)
class ReservationIn:
    id: int
    team_id: int
    flavor: str
    count: int
    starts_at: float
    ends_at: float


@dataclass(slots=True)
class TeamIn:
    id: int
    borrow_limit: int = 0
    lending_limit: int | None = None
    usage: float = 0.0  # decayed GPU-seconds (fair share input)
    weight: float | None = None  # fair-share weight; None: the GPUs granted to the team now


@dataclass
class Snapshot:
    now: float
    nodes: list[NodeIn]
    devices: list[DeviceIn]
    allocations: list[AllocIn]
    requests: list[RequestIn]
    teams: list[TeamIn] = field(default_factory=list)
    grants: dict[tuple[int, str], int] = field(default_factory=dict)  # (team id, flavor) -> count in force now
    reservations: list[ReservationIn] = field(default_factory=list)
    grace_s: float = 300.0
    min_runtime_s: float = 600.0
    hold_weight_s: float = 3600.0  # what holding one device now weighs in fair share, in GPU-seconds
    preemption_searches: int = 64  # bound on preemption searches per pass
    backfill_depth: int = 1  # blocked requests per flavor that get a shadow reservation (backfill protects them)
    drain_for_large: bool = True  # keep small work off a node draining for the first large request that cannot fit
    fair_reclaim: bool = True  # a borrowing request may reclaim borrowed GPUs of teams further above their share


# --- output ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Placement:
    request_id: int
    team_id: int
    keys: list[int]
    node_ids: list[int]
    borrowed: bool
    preemptible: bool
    planned_end: float


@dataclass(slots=True)
class Preemption:
    request_id: int  # the victim
    team_id: int
    preempt_at: float
    for_request_id: int


@dataclass(slots=True)
class Waiting:
    request_id: int
    reasons: list[tuple[str, str]]
    position_team: int = 0
    position_global: int = 0
    estimated_start: float | None = None
    within_quota: bool = True


@dataclass
class Decision:
    placements: list[Placement]
    preemptions: list[Preemption]
    waiting: dict[int, Waiting]
    order: list[int]  # every request id in queue order
    kept_for: dict[int, int] = field(default_factory=dict)  # device key -> request it is kept for (backfill shadow, reclaim)


def decide(snapshot: Snapshot) -> Decision:
    return _Pass(snapshot).run()


# --- the pass -------------------------------------------------------------------------------


class _Pass:
    def __init__(self, snap: Snapshot):
        self.snap = snap
        self.now = now = snap.now
        self.node_state = {n.id: n.state for n in snap.nodes}
        self.node_name = {n.id: n.name for n in snap.nodes}
        devices = sorted(snap.devices, key=lambda d: (d.node_id, d.mig, d.parent, d.index, d.key))
        self.devices = {d.key: d for d in devices}
        self.teams = {t.id: t for t in snap.teams}
        self.grants = snap.grants

        live: dict[int, AllocIn] = {}
        live_whole: set[int] = set()
        live_slice_parents: set[int] = set()
        for a in sorted(snap.allocations, key=lambda a: a.id):
            live[a.key] = a
            if a.key > 0:
                live_whole.add(a.key)
            else:
                dev = self.devices.get(a.key)
                if dev is not None:
                    live_slice_parents.add(dev.parent)
        self.live = live

        # Free devices per ready node and flavor (kept in device order), and buckets of ready nodes
        # by their free count per flavor (sorted node ids) for best-fit lookups in O(max count).
        self.free: dict[int, dict[str, list[int]]] = {}
        self.capacity: dict[str, int] = {}  # devices per flavor, every state (lending pool)
        self.node_cap: dict[tuple[int, str], int] = {}
        self.draining_free: dict[str, int] = {}
        self.release_at: dict[int, float] = {}  # occupied key -> when it is expected free
        for d in devices:
            self.capacity[d.flavor] = self.capacity.get(d.flavor, 0) + 1
            state = self.node_state.get(d.node_id, DOWN)
            occupant = live.get(d.key)
            blocked = occupant is not None or (d.key > 0 and d.key in live_slice_parents) or (d.key < 0 and d.parent in live_whole)
            if occupant is not None:
                self.release_at[d.key] = self._release_time(occupant)
            elif blocked:
                # The other kind (whole vs slice) of this GPU is live: free when that ends.
                self.release_at[d.key] = self._cross_release(d)
            if state == READY:
                self.node_cap[(d.node_id, d.flavor)] = self.node_cap.get((d.node_id, d.flavor), 0) + 1
                if not blocked:
                    self.free.setdefault(d.node_id, {}).setdefault(d.flavor, []).append(d.key)
            elif state == DRAINING and not blocked:
                self.draining_free[d.flavor] = self.draining_free.get(d.flavor, 0) + 1
        self.max_per_node: dict[str, int] = {}
        for (node_id, flavor), n in self.node_cap.items():
            self.max_per_node[flavor] = max(self.max_per_node.get(flavor, 0), n)
        self.buckets: dict[str, list[list[int]]] = {f: [[] for _ in range(m + 1)] for f, m in self.max_per_node.items()}
        self.free_total: dict[str, int] = {}
        for node_id in sorted(self.free):
            for flavor, keys in self.free[node_id].items():
                self.buckets[flavor][len(keys)].append(node_id)
                self.free_total[flavor] = self.free_total.get(flavor, 0) + len(keys)

        # Quota state: devices each team holds within its grants, and borrowed.
        self.used: dict[tuple[int, str], int] = {}
        self.borrowed_team: dict[int, int] = {}
        self.borrowed_flavor: dict[str, int] = {}
        self.holding: dict[int, int] = {}
        for a in live.values():
            self.holding[a.team_id] = self.holding.get(a.team_id, 0) + 1
            if a.borrowed:
                self.borrowed_team[a.team_id] = self.borrowed_team.get(a.team_id, 0) + 1
                self.borrowed_flavor[a.flavor] = self.borrowed_flavor.get(a.flavor, 0) + 1
            else:
                k = (a.team_id, a.flavor)
                self.used[k] = self.used.get(k, 0) + 1
        self.granted_flavor: dict[str, int] = {}
        self.grant_teams: dict[str, list[int]] = {}
        for (team_id, flavor), count in sorted(self.grants.items()):
            self.granted_flavor[flavor] = self.granted_flavor.get(flavor, 0) + count
            self.grant_teams.setdefault(flavor, []).append(team_id)
        self._pool_cache: dict[str, tuple[int, int]] = {}
        self.weights: dict[int, int] = {}

        # Per-device constraints set during the pass.
        self.shadow: dict[int, float] = {}  # key -> backfill must end by this time (claimed: now)
        self.shadow_owner: dict[int, int] = {}
        self.hold: dict[int, tuple[int, float, float]] = {}  # key -> (team, window start, window end)
        self.special_nodes: set[int] = set()
        self.held_free: dict[str, int] = {}
        self.held_nodes: dict[tuple[int, str], list[int]] = {}  # (team, flavor) -> nodes holding its active reservation
        self.claimed_soon: set[int] = set()
        self.victims: set[int] = set()  # victim request ids chosen this pass
        self.preempt_at: dict[int, float] = {}  # key -> release time for live keys being preempted
        for a in live.values():
            if a.preempt_at is not None:
                self.preempt_at[a.key] = a.preempt_at
        self._victim_index: dict[str, dict[int, dict[int, int]]] = {}
        self.searches_left = snap.preemption_searches
        self._eta_heaps: dict[str, list[float]] = {}
        # When each team's own (non-borrowed) devices of a flavor end, kept sorted as work is placed.
        self._team_ends: dict[tuple[int, str], list[float]] = {}
        for a in live.values():
            if not a.borrowed and a.key in self.release_at:
                self._team_ends.setdefault((a.team_id, a.flavor), []).append(self.release_at[a.key])
        for ends in self._team_ends.values():
            ends.sort()
        self._by_request: dict[int, list[AllocIn]] | None = None
        self._preempt_miss: dict[tuple[int, str, int], float] = {}
        self.shadowed_flavors: dict[str, tuple[int, float]] = {}  # flavor -> its first shadowed request, its start
        self.shadow_count: dict[str, int] = {}

    # -- helpers --

    def _release_time(self, a: AllocIn) -> float:
        if a.preempt_at is not None:
            return a.preempt_at
        if a.planned_end is not None:
            return max(a.planned_end, self.now)
        return a.started_at + DEFAULT_DURATION_S if a.started_at + DEFAULT_DURATION_S > self.now else self.now + DEFAULT_DURATION_S

    def _cross_release(self, d: DeviceIn) -> float:
        times = [self._release_time(a) for a in self.live.values()
                 if (d.key < 0 and a.key == d.parent) or (d.key > 0 and a.key < 0 and self.devices.get(a.key) is not None
                                                          and self.devices[a.key].parent == d.key)]
        return max(times, default=INF)

    def _move(self, node_id: int, flavor: str, before: int, after: int) -> None:
        bucket = self.buckets[flavor]
        lst = bucket[before]
        i = bisect_left(lst, node_id)
        if i < len(lst) and lst[i] == node_id:
            del lst[i]
        insort(bucket[after], node_id)
        self.free_total[flavor] += after - before

    def _take(self, node_id: int, flavor: str, keys: list[int]) -> None:
        free = self.free[node_id][flavor]
        before = len(free)
        taken = set(keys)
        free[:] = [k for k in free if k not in taken]
        self._move(node_id, flavor, before, len(free))

    def _allowed(self, key: int, team_id: int, end: float) -> bool:
        limit = self.shadow.get(key)
        if limit is not None and end > limit:
            return False
        held = self.hold.get(key)
        if held is not None and held[0] != team_id and end > held[1]:
            return False
        return True

    def _usable(self, node_id: int, flavor: str, team_id: int, end: float) -> list[int]:
        keys = self.free[node_id][flavor]
        if node_id not in self.special_nodes:
            return keys
        return [k for k in keys if self._allowed(k, team_id, end)]

    def _top_free(self, flavor: str) -> int:
        bucket = self.buckets.get(flavor)
        if not bucket:
            return 0
        for c in range(len(bucket) - 1, 0, -1):
            if bucket[c]:
                return c
        return 0

    def _pick_in_node(self, keys: list[int], n: int, nvlink: bool) -> list[int]:
        """n of the node's usable keys: one NVLink group if one holds them all (the tightest such group);
        otherwise the largest groups first, so the set spans as few links as possible."""
        if n >= len(keys):
            return list(keys)
        groups: dict[str, list[int]] = {}
        for k in keys:
            groups.setdefault(self.devices[k].group, []).append(k)
        if len(groups) == 1:
            return keys[:n]
        if nvlink:
            fitting = [(len(v), g) for g, v in groups.items() if g and len(v) >= n]
            if fitting:
                return groups[min(fitting)[1]][:n]
        chosen: list[int] = []
        for g, v in sorted(groups.items(), key=lambda item: (-len(item[1]), item[0])):
            chosen.extend(v[: n - len(chosen)])
            if len(chosen) >= n:
                break
        return chosen

    def _nvlink_fits(self, keys: list[int], n: int) -> bool:
        counts: dict[str, int] = {}
        for k in keys:
            g = self.devices[k].group
            if g:
                c = counts.get(g, 0) + 1
                if c >= n:
                    return True
                counts[g] = c
        return False

    # -- quota --

    def _pool(self, flavor: str) -> tuple[int, int]:
        """(devices others may borrow with lending limits, without them) for a flavor."""
        cached = self._pool_cache.get(flavor)
        if cached is not None:
            return cached
        unassigned = max(0, self.capacity.get(flavor, 0) - self.granted_flavor.get(flavor, 0))
        limited = unlimited = unassigned
        for team_id in self.grant_teams.get(flavor, ()):
            idle = max(0, self.grants[(team_id, flavor)] - self.used.get((team_id, flavor), 0))
            unlimited += idle
            team = self.teams.get(team_id)
            lend = team.lending_limit if team is not None and team.lending_limit is not None else None
            limited += idle if lend is None else min(idle, lend)
        self._pool_cache[flavor] = (limited, unlimited)
        return limited, unlimited

    def _quota_block(self, r: RequestIn) -> tuple[str, str] | None:
        team = self.teams.get(r.team_id) or TeamIn(id=r.team_id)
        grant = self.grants.get((r.team_id, r.flavor), 0)
        used = self.used.get((r.team_id, r.flavor), 0)
        borrowed = self.borrowed_team.get(r.team_id, 0)
        if borrowed + r.count > team.borrow_limit:
            if team.borrow_limit == 0:
                tail = "the team may not borrow beyond its grants"
            else:
                tail = f"it has borrowed {borrowed} of its borrowing limit of {team.borrow_limit}"
            return WAITING_FOR_QUOTA, (f"The team uses {used} of {grant} granted {r.flavor}; {r.count} more "
                                       f"would be borrowed, and {tail}.")
        limited, unlimited = self._pool(r.flavor)
        in_use = self.borrowed_flavor.get(r.flavor, 0)
        if in_use + r.count > limited:
            if in_use + r.count <= unlimited:
                return BLOCKED_BY_POLICY, (f"Other teams' lending limits leave {max(0, limited - in_use)} idle "
                                           f"{r.flavor} to borrow; {r.count} needed.")
            return WAITING_FOR_QUOTA, (f"The team's {r.flavor} quota is in use ({used} of {grant}) and only "
                                       f"{max(0, limited - in_use)} idle {r.flavor} can be borrowed; {r.count} needed.")
        return None

    # -- ordering --

    def _share(self, team_id: int, devices: int = 0) -> float:
        """The team's fair-share standing (lower goes first): decayed GPU-seconds used plus what it
        holds now (and `devices` more, or fewer), per unit of weight (its fair-share weight if set,
        else per granted GPU)."""
        weight = self.weights.get(team_id)
        team = self.teams.get(team_id)
        if weight is None:
            if team is not None and team.weight is not None and team.weight > 0:
                weight = team.weight
            else:
                weight = max(1, sum(v for (t, _f), v in self.grants.items() if t == team_id))
            self.weights[team_id] = weight
        usage = (team.usage if team else 0.0) + (self.holding.get(team_id, 0) + devices) * self.snap.hold_weight_s
        return usage / weight

    def _order(self) -> tuple[list[RequestIn], dict[int, bool]]:
        by_team: dict[int, list[tuple]] = {}
        for r in self.snap.requests:
            by_team.setdefault(r.team_id, []).append((-r.priority, r.created_at, r.id, r))
        within: dict[int, bool] = {}
        # Requests grouped by everything but their age (a few hundred groups at most), each group
        # then sorted by (age, id): the same order as one sort on the whole key, a fraction of the
        # tuple comparisons for a queue of thousands.
        groups: dict[tuple, list[tuple]] = {}
        used, grants = self.used, self.grants
        for team_id, reqs in by_team.items():
            reqs.sort()  # (priority, age, id): ids are unique, the request itself is never compared
            share = self._share(team_id)
            cum: dict[str, int] = {}
            for neg_priority, created_at, request_id, r in reqs:
                c = cum[r.flavor] = cum.get(r.flavor, 0) + r.count
                ok = within[request_id] = used.get((team_id, r.flavor), 0) + c <= grants.get((team_id, r.flavor), 0)
                key = (0, neg_priority, share) if ok else (1, share, neg_priority)
                group = groups.get(key)
                if group is None:
                    group = groups[key] = []
                group.append((created_at, request_id, r))
        order: list[RequestIn] = []
        for key in sorted(groups):
            group = groups[key]
            group.sort()
            order.extend([item[2] for item in group])
        return order, within

    # -- placement --

    def _find(self, r: RequestIn, end: float, avoid: set[int] | None = None) -> list[tuple[int, list[int]]] | None:
        """Where `r` fits now, best fit; None if nowhere. Nodes in `avoid` (being drained for a large
        request further back in the queue) are used only when no other node fits."""
        if avoid:
            found = self._find_in(r, end, avoid)
            if found is not None:
                return found
        return self._find_in(r, end, None)

    def _find_in(self, r: RequestIn, end: float, avoid: set[int] | None) -> list[tuple[int, list[int]]] | None:
        flavor, n = r.flavor, r.count
        bucket = self.buckets.get(flavor)
        if not bucket or self.free_total.get(flavor, 0) < n:
            return None
        maxc = len(bucket) - 1
        nvlink = r.nvlink_preferred and not r.mig and n > 1
        # A team with an advance reservation uses its held devices first (that is what they are for).
        for node_id in self.held_nodes.get((r.team_id, flavor), ()):
            keys = [k for k in self.free.get(node_id, {}).get(flavor, ()) if self.hold.get(k, (None,))[0] == r.team_id
                    and self._allowed(k, r.team_id, end)]
            if len(keys) >= n:
                return [(node_id, self._pick_in_node(keys, n, nvlink))]
        if n <= maxc:
            for c in range(n, maxc + 1):
                fallback = None
                scanned = 0
                for node_id in bucket[c]:
                    if avoid and node_id in avoid:
                        continue
                    keys = self._usable(node_id, flavor, r.team_id, end)
                    if len(keys) < n:
                        continue
                    if not nvlink or self._nvlink_fits(keys, n):
                        return [(node_id, self._pick_in_node(keys, n, nvlink))]
                    if fallback is None:
                        fallback = (node_id, keys)
                    scanned += 1
                    if scanned >= 16:
                        break
                if fallback is not None:
                    return [(fallback[0], self._pick_in_node(fallback[1], n, nvlink))]
        if r.same_node:
            return None
        # Spread over as few nodes as possible: the emptiest first.
        chosen: list[tuple[int, list[int]]] = []
        need = n
        for c in range(maxc, 0, -1):
            for node_id in bucket[c]:
                if avoid and node_id in avoid:
                    continue
                keys = self._usable(node_id, flavor, r.team_id, end)
                if not keys:
                    continue
                take = self._pick_in_node(keys, min(need, len(keys)), nvlink)
                chosen.append((node_id, take))
                need -= len(take)
                if need == 0:
                    return chosen
        return None

    def _commit(self, r: RequestIn, found: list[tuple[int, list[int]]], borrowed: bool, end: float) -> Placement:
        keys: list[int] = []
        nodes: list[int] = []
        for node_id, take in found:
            self._take(node_id, r.flavor, take)
            keys.extend(take)
            nodes.extend([node_id] * len(take))
        n = len(keys)
        self.holding[r.team_id] = self.holding.get(r.team_id, 0) + n
        if borrowed:
            self.borrowed_team[r.team_id] = self.borrowed_team.get(r.team_id, 0) + n
            self.borrowed_flavor[r.flavor] = self.borrowed_flavor.get(r.flavor, 0) + n
        else:
            k = (r.team_id, r.flavor)
            self.used[k] = self.used.get(k, 0) + n
            for _ in keys:
                insort(self._team_ends.setdefault(k, []), end)
        self._pool_cache.pop(r.flavor, None)
        for key in keys:
            self.release_at[key] = end
        return Placement(request_id=r.id, team_id=r.team_id, keys=keys, node_ids=nodes, borrowed=borrowed,
                         preemptible=borrowed or r.preemptible, planned_end=end)

    # -- advance reservations --

    def _hold_reservations(self) -> None:
        for res in sorted(self.snap.reservations, key=lambda x: (x.starts_at, x.id)):
            if res.ends_at <= self.now:
                continue
            per_node: dict[int, list[tuple[float, int]]] = {}
            for d in self.devices.values():
                if d.flavor != res.flavor or d.key in self.hold or self.node_state.get(d.node_id) != READY:
                    continue
                avail = self.release_at.get(d.key, self.now)
                per_node.setdefault(d.node_id, []).append((avail, d.key))
            ready_by = max(res.starts_at, self.now)
            ranked = sorted(per_node.items(), key=lambda item: (-sum(1 for t, _ in item[1] if t <= ready_by), item[0]))
            need = res.count
            for node_id, cands in ranked:
                for _avail, key in sorted(cands)[:need]:
                    self.hold[key] = (res.team_id, res.starts_at, res.ends_at)
                    self.special_nodes.add(node_id)
                    if res.starts_at <= self.now and node_id not in self.held_nodes.setdefault((res.team_id, res.flavor), []):
                        self.held_nodes[(res.team_id, res.flavor)].append(node_id)
                    if key not in self.release_at:
                        self.held_free[res.flavor] = self.held_free.get(res.flavor, 0) + 1
                    need -= 1
                if need == 0:
                    break

    # -- draining for large requests --

    def _plan_drains(self, order: list[RequestIn], within: dict[int, bool]) -> dict[str, tuple[int, set[int]]]:
        """Per flavor, the first request in queue order that needs more devices on one node than any
        node has free now (and that quota lets run): the node where that many free up earliest is
        kept out of reach of the requests ahead of it whenever another node fits them, so it drains.
        Without this, small work placed ahead of a large request every pass (within-quota sessions
        above all) refills the node its backfill shadow points at, and it can wait for days.
        Returns flavor -> (the request's position in the queue, {node})."""
        plans: dict[str, tuple[int, set[int]]] = {}
        seen: set[str] = set()
        for position, r in enumerate(order):
            flavor = r.flavor
            if flavor in seen:
                continue
            if not r.same_node or r.count > self.max_per_node.get(flavor, 0) or r.count <= self._top_free(flavor):
                continue
            if not within.get(r.id, False) and self._quota_block(r) is not None:
                continue
            seen.add(flavor)
            node_id = self._earliest_node(r)
            if node_id is not None:
                plans[flavor] = (position, {node_id})
        return plans

    def _earliest_node(self, r: RequestIn) -> int | None:
        """The ready node where `r.count` devices of its flavor are free earliest (live ones by their
        release times), not counting devices held for another team's reservation."""
        per_node: dict[int, list[float]] = {}
        for d in self.devices.values():
            if d.flavor != r.flavor or self.node_state.get(d.node_id) != READY:
                continue
            held = self.hold.get(d.key)
            if held is not None and held[0] != r.team_id:
                continue
            per_node.setdefault(d.node_id, []).append(self.release_at.get(d.key, self.now))
        best = None
        for node_id, times in per_node.items():
            if len(times) >= r.count:
                times.sort()
                start = times[r.count - 1]
                if start < INF and (best is None or (start, node_id) < best):
                    best = (start, node_id)
        return best[1] if best else None

    # -- backfill shadow --

    def _shadow(self, r: RequestIn) -> tuple[float, int] | None:
        """Reserve for the first blocked request of a flavor the devices that free up earliest
        (on one node when it needs one node); later work may use them only if it ends before."""
        per_node: dict[int, list[tuple[float, int]]] = {}
        for d in self.devices.values():
            if d.flavor != r.flavor or self.node_state.get(d.node_id) != READY:
                continue
            if d.key in self.shadow or d.key in self.claimed_soon:
                continue
            held = self.hold.get(d.key)
            if held is not None and held[0] != r.team_id:
                continue
            per_node.setdefault(d.node_id, []).append((self.release_at.get(d.key, self.now), d.key))
        best: tuple[float, int, list[int]] | None = None
        if r.same_node:
            for node_id, times in per_node.items():
                if len(times) < r.count:
                    continue
                times.sort()
                start = times[r.count - 1][0]
                if best is None or (start, node_id) < (best[0], best[1]):
                    best = (start, node_id, [k for _, k in times[: r.count]])
        else:
            everything = sorted(t for times in per_node.values() for t in times)
            if len(everything) >= r.count:
                best = (everything[r.count - 1][0], -1, [k for _, k in everything[: r.count]])
        if best is None or best[0] == INF:
            return None
        start, node_id, keys = best
        for key in keys:
            self.shadow[key] = start
            self.shadow_owner[key] = r.id
            self.special_nodes.add(self.devices[key].node_id)
        return start, node_id

    # -- preemption --

    def _victims_on(self, flavor: str) -> dict[int, dict[int, int]]:
        """node -> {victim request id: devices of this flavor it holds there}, for live allocations
        on ready nodes not already being preempted."""
        index = self._victim_index.get(flavor)
        if index is None:
            index = {}
            for a in self.live.values():
                if a.flavor != flavor or a.preempt_at is not None or self.node_state.get(a.node_id) != READY:
                    continue
                per = index.setdefault(a.node_id, {})
                per[a.request_id] = per.get(a.request_id, 0) + 1
            self._victim_index[flavor] = index
        return index

    def _preempt(self, r: RequestIn, end: float, *, reclaim: bool = False, pool: bool = False) -> tuple[list[AllocIn], float] | None:
        """Choose the fewest victims that free a fitting set for `r` on one node. Returns the victims'
        representative allocations (one per victim request) and when the set is free.

        `reclaim`: `r` borrows. Only borrowed allocations of other teams, of no higher priority, whose
        team stays above `r`'s team in fair share after the move (so the move cannot be undone by
        the victim's next request: no ping-pong) may be chosen. `pool`: the borrowable pool is used
        up, so the victims must also hand back enough borrowed devices for `r` to borrow."""
        if self.searches_left <= 0 or r.count > self.max_per_node.get(r.flavor, 0):
            return None
        # A search that found nothing for this team, flavor and priority finds nothing for a larger
        # request either (victims only get fewer during a pass): skip it.
        miss_key = (r.team_id, r.flavor, r.priority, reclaim, pool)
        min_victims = 0
        if reclaim:
            reclaimer_after = self._share(r.team_id, r.count)
        if pool:
            limited, _unlimited = self._pool(r.flavor)
            min_victims = r.count - max(0, limited - self.borrowed_flavor.get(r.flavor, 0))  # borrowed devices to hand back
        if r.count >= self._preempt_miss.get(miss_key, INF):
            return None
        self.searches_left -= 1
        if self._by_request is None:
            self._by_request = {}
            for a in self.live.values():
                self._by_request.setdefault(a.request_id, []).append(a)
        by_request = self._by_request
        index = self._victims_on(r.flavor)
        soon_by_node: dict[int, list[int]] = {}
        for key, at in self.preempt_at.items():
            a = self.live[key]
            if a.flavor == r.flavor and key not in self.claimed_soon and self.node_state.get(a.node_id) == READY:
                held = self.hold.get(key)
                if held is None or held[0] == r.team_id or end <= held[1]:
                    soon_by_node.setdefault(a.node_id, []).append(key)
        def victim_class(a: AllocIn, devs: int) -> int | None:
            if a.request_id in self.victims or a.team_id == r.team_id or self.now - a.started_at < self.snap.min_runtime_s:
                return None
            if reclaim:
                if not a.borrowed or a.priority > r.priority or self._share(a.team_id, -devs) <= reclaimer_after:
                    return None
                return 0
            if a.borrowed:
                return 0
            if a.preemptible and a.priority < r.priority:
                return 1
            return None

        # With the pool used up, victims anywhere may hand back the borrowed devices `r` needs to
        # borrow (their GPUs need not be the ones it gets): the eligible borrowed ones, largest first.
        pool_options: list[tuple] = []
        if min_victims > 0:
            for node_victims in index.values():
                for req_id, devs in node_victims.items():
                    a = by_request[req_id][0]
                    if a.borrowed and victim_class(a, devs) == 0:
                        pool_options.append((-devs, -a.started_at, req_id, devs))
            pool_options.sort()
            if sum(o[3] for o in pool_options) < min_victims:
                self._preempt_miss[miss_key] = min(r.count, self._preempt_miss.get(miss_key, INF))
                return None
        best = None
        candidates = set(index) | set(soon_by_node)
        if min_victims > 0:
            candidates |= {n for n, per in self.free.items() if per.get(r.flavor)}
        for node_id in sorted(candidates):
            free = self._usable(node_id, r.flavor, r.team_id, end) if node_id in self.free and r.flavor in self.free[node_id] else []
            soon = soon_by_node.get(node_id, [])
            need = r.count - len(free) - len(soon)
            picked: list[tuple[int, int, int]] = []  # (class, request id, devices)
            if need > 0:
                options = []
                for req_id, devs in index.get(node_id, {}).items():
                    a = by_request[req_id][0]
                    cls = victim_class(a, devs)
                    if cls is None:
                        continue
                    held_keys = [x.key for x in by_request[req_id] if x.node_id == node_id and x.flavor == r.flavor]
                    if any(not self._allowed_for_preemptor(k, r, end) for k in held_keys):
                        continue
                    options.append((cls, -devs, -a.started_at, req_id, devs))
                # Borrowed victims alone if they suffice, else borrowed and lower-priority together;
                # within a class the largest first, which reaches the need with the fewest victims.
                for allowed_cls in (0, 1):
                    picked, got = [], 0
                    for cls, _neg, _age, req_id, devs in sorted(o for o in options if o[0] <= allowed_cls):
                        picked.append((cls, req_id, devs))
                        got += devs
                        if got >= need:
                            break
                    if got >= need:
                        break
                else:
                    continue
            handed_back = sum(p[2] for p in picked if by_request[p[1]][0].borrowed)
            if handed_back < min_victims:
                chosen_ids = {p[1] for p in picked}
                for _neg, _age, req_id, devs in pool_options:
                    if req_id in chosen_ids:
                        continue
                    picked.append((0, req_id, devs))
                    handed_back += devs
                    if handed_back >= min_victims:
                        break
                if handed_back < min_victims:
                    continue
            cost = (max((p[0] for p in picked), default=-1), len(picked), sum(p[2] for p in picked) - max(need, 0), node_id)
            if best is None or cost < best[0]:
                best = (cost, node_id, free, soon, picked)
        if best is None:
            self._preempt_miss[miss_key] = min(r.count, self._preempt_miss.get(miss_key, INF))
            return None
        _cost, node_id, free, soon, picked = best
        at = self.now + self.snap.grace_s
        victims = []
        ready_at = max([self.preempt_at[k] for k in soon] + [self.now])
        taken = r.count
        for key in free[:taken]:
            self.shadow[key] = self.now  # claimed: nobody else may start here
            self.shadow_owner[key] = r.id
            self.special_nodes.add(node_id)
        taken -= min(taken, len(free))
        for key in soon[:taken]:
            self.claimed_soon.add(key)
        taken -= min(taken, len(soon))
        for _cls, req_id, _devs in picked:
            self.victims.add(req_id)
            victims.append(by_request[req_id][0])
            for a in by_request[req_id]:
                self.preempt_at[a.key] = at
                self.release_at[a.key] = at
                if a.node_id == node_id and a.flavor == r.flavor and taken > 0:
                    self.claimed_soon.add(a.key)
                    taken -= 1
            ready_at = max(ready_at, at)
        return victims, ready_at

    def _allowed_for_preemptor(self, key: int, r: RequestIn, end: float) -> bool:
        held = self.hold.get(key)
        return held is None or held[0] == r.team_id or end <= held[1]

    # -- estimates --

    def _eta_fluid(self, r: RequestIn) -> float | None:
        """A fluid estimate: the flavor's devices as a pool freeing at their planned ends, consumed in
        queue order by the requests ahead (each holding its devices for its maximum duration)."""
        heap = self._eta_heaps.get(r.flavor)
        if heap is None:
            heap = []
            for d in self.devices.values():
                if d.flavor == r.flavor and self.node_state.get(d.node_id) == READY:
                    heap.append(self._initial_release.get(d.key, self.now))
            heapq.heapify(heap)
            self._eta_heaps[r.flavor] = heap
        if len(heap) < r.count:
            return None
        popped = [heapq.heappop(heap) for _ in range(r.count)]
        start = max(popped[-1], self.now)
        if start == INF:
            for t in popped:
                heapq.heappush(heap, t)
            return None
        for _ in popped:
            heapq.heappush(heap, start + r.max_duration_s)
        return start

    def _eta_quota(self, r: RequestIn) -> float | None:
        """When enough of the team's own (non-borrowed) devices of the flavor end for `r` to fit its grant."""
        grant = self.grants.get((r.team_id, r.flavor), 0)
        if r.count > grant:
            return None
        used = self.used.get((r.team_id, r.flavor), 0)
        must_end = used + r.count - grant
        ends = self._team_ends.get((r.team_id, r.flavor), [])
        if must_end <= 0 or must_end > len(ends):
            return None
        return ends[must_end - 1]

    # -- reasons --

    def _capacity_reasons(self, r: RequestIn, end: float, ahead: int) -> list[tuple[str, str]]:
        reasons: list[tuple[str, str]] = []
        flavor, n = r.flavor, r.count
        top = self._top_free(flavor)
        total = self.free_total.get(flavor, 0)
        if self.capacity.get(flavor, 0) and not self.max_per_node.get(flavor):
            reasons.append((NO_CAPACITY_TOGETHER, f"No node offering {flavor} is ready."))
        elif r.same_node and top < n:
            reasons.append((NO_CAPACITY_TOGETHER, f"No node has {n} free {flavor} together (at most {top} free on one node)."))
            if total >= n:
                reasons.append((NEEDS_ONE_NODE, f"{total} {flavor} are free across nodes, but all {n} must sit on one node."))
        elif not r.same_node and total < n:
            reasons.append((NO_CAPACITY_TOGETHER, f"Only {total} {flavor} are free in the fleet; {n} needed."))
        else:
            held = self.held_free.get(flavor, 0)
            if held:
                reasons.append((RESERVED, f"{held} free {flavor} are held for an advance reservation; work that would "
                                          "run into its window may not use them."))
            owner = self.shadowed_flavors.get(flavor)
            if owner is not None and owner[0] != r.id:
                reasons.append((QUEUED_BEHIND, f"Free {flavor} are kept for request #{owner[0]}, ahead in the queue; "
                                               "this one would still be running when it starts."))
        if self.draining_free.get(flavor):
            reasons.append((NODE_DRAINING, f"{self.draining_free[flavor]} free {flavor} are on draining nodes and take no new work."))
        if ahead and not any(code == QUEUED_BEHIND for code, _ in reasons):
            reasons.append((QUEUED_BEHIND, f"{ahead} request{'s' if ahead != 1 else ''} for {flavor} ahead of it in the queue."))
        if not reasons:
            reasons.append((NO_CAPACITY_TOGETHER, f"No free {flavor} fits this request now."))
        return reasons

    def _preempting(self, r: RequestIn, chosen: tuple[list[AllocIn], float], within: bool,
                    preemptions: list[Preemption]) -> Waiting:
        victims, ready_at = chosen
        for v in victims:
            preemptions.append(Preemption(request_id=v.request_id, team_id=v.team_id,
                                          preempt_at=self.now + self.snap.grace_s, for_request_id=r.id))
        plural = "s" if len(victims) != 1 else ""
        if victims and not within:
            msg = (f"Reclaiming {r.flavor} from {len(victims)} borrowed workload{plural} of teams further above "
                   f"their fair share; they stop after a grace period.")
        elif victims:
            msg = (f"Reclaiming {r.flavor} from {len(victims)} borrowed or lower-priority "
                   f"workload{plural}; they stop after a grace period.")
        else:
            msg = f"{r.flavor} being reclaimed from preempted workloads will go to this request."
        return Waiting(r.id, [(PREEMPTION_IN_PROGRESS, msg)], estimated_start=ready_at, within_quota=within)

    # -- run --

    def run(self) -> Decision:
        self._initial_release = dict(self.release_at)
        self._hold_reservations()
        order, within_at_start = self._order()
        drains = self._plan_drains(order, within_at_start) if self.snap.drain_for_large else {}
        placements: list[Placement] = []
        preemptions: list[Preemption] = []
        waiting: dict[int, Waiting] = {}
        blocked_ahead: dict[str, int] = {}
        blocked: list[tuple[RequestIn, float, int]] = []
        now = self.now
        for position, r in enumerate(order):
            end = now + r.max_duration_s
            within = self.used.get((r.team_id, r.flavor), 0) + r.count <= self.grants.get((r.team_id, r.flavor), 0)
            if not within:
                block = self._quota_block(r)
                if block is not None:
                    # Only the borrowable pool is used up (the team's own borrowing limit allows it):
                    # borrowed GPUs of teams further above their share can be reclaimed for it.
                    chosen = None
                    if self.snap.fair_reclaim and self.searches_left > 0 and (
                            self.borrowed_team.get(r.team_id, 0) + r.count <= (self.teams.get(r.team_id) or TeamIn(id=r.team_id)).borrow_limit):
                        chosen = self._preempt(r, end, reclaim=True, pool=True)
                    if chosen is None:
                        waiting[r.id] = Waiting(r.id, [block], estimated_start=self._eta_quota(r), within_quota=False)
                    else:
                        waiting[r.id] = self._preempting(r, chosen, within, preemptions)
                    continue
            drain = drains.get(r.flavor)
            found = self._find(r, end, drain[1] if drain is not None and position < drain[0] else None)
            if found is not None:
                placements.append(self._commit(r, found, borrowed=not within, end=end))
                self._eta_fluid(r)
                continue
            ahead = blocked_ahead.get(r.flavor, 0)
            blocked_ahead[r.flavor] = ahead + 1
            if (within or self.snap.fair_reclaim) and self.searches_left > 0:
                chosen = self._preempt(r, end, reclaim=not within)
                if chosen is not None:
                    waiting[r.id] = self._preempting(r, chosen, within, preemptions)
                    continue
            blocked.append((r, end, ahead))
            eta = None
            if self.shadow_count.get(r.flavor, 0) < self.snap.backfill_depth:
                shadow = self._shadow(r)
                if shadow is not None:
                    self.shadowed_flavors.setdefault(r.flavor, (r.id, shadow[0]))
                    self.shadow_count[r.flavor] = self.shadow_count.get(r.flavor, 0) + 1
                    eta = shadow[0]
            fluid = self._eta_fluid(r)
            if eta is None:
                eta = fluid
            waiting[r.id] = Waiting(r.id, [], estimated_start=eta, within_quota=within)
        # Why capacity-blocked requests wait is told from the pass's final state (what is free once
        # everything this pass placed is placed), not from the moment each was considered.
        for r, end, ahead in blocked:
            waiting[r.id].reasons = self._capacity_reasons(r, end, ahead)
        # Queue positions over what still waits, in queue order.
        team_pos: dict[int, int] = {}
        position = 0
        for r in order:
            w = waiting.get(r.id)
            if w is None:
                continue
            position += 1
            team_pos[r.team_id] = team_pos.get(r.team_id, 0) + 1
            w.position_global = position
            w.position_team = team_pos[r.team_id]
        return Decision(placements=placements, preemptions=preemptions, waiting=waiting, order=[r.id for r in order],
                        kept_for=dict(self.shadow_owner))
