"""Helpers for the scheduling engine's and pass's tests: inventory rows from a simulated fleet
(the same parser the simulated GPU source uses), grants, and requests."""

import datetime

from django.utils import timezone

from governance.models import QuotaGrant, TeamPolicy
from scheduler.gpus import NodeInfo, load_fleet_file
from scheduler.models import GpuDevice, MigSlice, Node

DEMO_FLEET = "scheduler/fleets/demo.yaml"


def fleet_rows(nodes: list[NodeInfo]) -> list[Node]:
    """Node/GpuDevice/MigSlice rows for a parsed fleet."""
    made = []
    for info in nodes:
        node = Node.objects.create(name=info.name, labels=info.labels, capacity=info.capacity, simulated=True,
                                   last_heartbeat=timezone.now())
        for g in info.gpus:
            gpu = GpuDevice.objects.create(node=node, uuid=g.uuid, index=g.index, model=g.model, memory_mb=g.memory_mb,
                                           nvlink_group=g.nvlink_group, mig_enabled=g.mig_enabled)
            for s in g.slices:
                MigSlice.objects.create(gpu=gpu, uuid=s.uuid, profile=s.profile, index=s.index, memory_mb=s.memory_mb)
        made.append(node)
    return made


def demo_fleet() -> list[Node]:
    return fleet_rows(load_fleet_file(DEMO_FLEET))


def small_fleet(*, nodes: int = 2, gpus: int = 4, model: str = "H100", group_size: int = 4, prefix: str = "n") -> list[Node]:
    """`nodes` nodes of `gpus` GPUs, NVLink groups of `group_size`."""
    from scheduler.gpus import GpuInfo

    infos = []
    for n in range(nodes):
        name = f"{prefix}{n}"
        infos.append(NodeInfo(name=name, simulated=True, gpus=tuple(
            GpuInfo(uuid=f"GPU-{name}-{i}", index=i, model=model, memory_mb=81920, nvlink_group=f"{name}-nvl{i // group_size}")
            for i in range(gpus))))
    return fleet_rows(infos)


def grant(team, flavor: str = "H100", count: int = 4) -> QuotaGrant:
    return QuotaGrant.objects.create(team=team, flavor=flavor, count=count,
                                     starts_at=timezone.now() - datetime.timedelta(days=1))


def policy(team, **fields) -> TeamPolicy:
    TeamPolicy.objects.filter(team=team).update(**fields)
    return TeamPolicy.objects.get(team=team)


# --- pure snapshots for engine tests (no database) -------------------------------------------

from scheduler import engine as E  # noqa: E402

NOW = 1_800_000_000.0


class Fleet:
    """Builds an engine snapshot: nodes of whole GPUs (NVLink groups) and MIG GPUs, live allocations,
    pending requests, grants and team policies, with ids that grow as things are added."""

    def __init__(self, now: float = NOW):
        self.now = now
        self.nodes: list[E.NodeIn] = []
        self.devices: list[E.DeviceIn] = []
        self.allocations: list[E.AllocIn] = []
        self.requests: list[E.RequestIn] = []
        self.teams: dict[int, E.TeamIn] = {}
        self.grants: dict[tuple[int, str], int] = {}
        self.reservations: list[E.ReservationIn] = []
        self._gpu = 0
        self._slice = 0
        self._ids = 0
        self.options: dict = {}

    def _next(self) -> int:
        self._ids += 1
        return self._ids

    def node(self, count: int = 8, flavor: str = "H100", *, state: str = "ready", group_size: int = 8, mig: dict | None = None) -> list[int]:
        node_id = len(self.nodes) + 1
        self.nodes.append(E.NodeIn(id=node_id, name=f"node{node_id}", state=state))
        keys = []
        for i in range(count):
            self._gpu += 1
            if mig and i in mig:
                for s, profile in enumerate(mig[i]):
                    self._slice += 1
                    self.devices.append(E.DeviceIn(key=-self._slice, node_id=node_id, flavor=profile, mig=True, parent=self._gpu, index=s))
                    keys.append(-self._slice)
            else:
                self.devices.append(E.DeviceIn(key=self._gpu, node_id=node_id, flavor=flavor, group=f"{node_id}-{i // group_size}",
                                               parent=self._gpu, index=i))
                keys.append(self._gpu)
        return keys

    def team(self, team_id: int, *, borrow_limit: int = 0, lending_limit: int | None = None, usage: float = 0.0, **grants) -> int:
        self.teams[team_id] = E.TeamIn(id=team_id, borrow_limit=borrow_limit, lending_limit=lending_limit, usage=usage)
        for flavor, count in grants.items():
            self.grants[(team_id, flavor)] = count
        return team_id

    def hold(self, keys: list[int], team_id: int, *, borrowed: bool = False, preemptible: bool = False, priority: int = 100,
             age_s: float = 3600, ends_in_s: float | None = 3600, preempt_in_s: float | None = None) -> int:
        request_id = self._next()
        by_key = {d.key: d for d in self.devices}
        for key in keys:
            d = by_key[key]
            self.allocations.append(E.AllocIn(
                id=self._next(), request_id=request_id, team_id=team_id, key=key, node_id=d.node_id, flavor=d.flavor,
                borrowed=borrowed, preemptible=preemptible or borrowed, priority=priority, started_at=self.now - age_s,
                planned_end=None if ends_in_s is None else self.now + ends_in_s,
                preempt_at=None if preempt_in_s is None else self.now + preempt_in_s))
        return request_id

    def want(self, team_id: int, count: int = 1, flavor: str = "H100", *, age_s: float = 60, **fields) -> int:
        request_id = self._next()
        self.requests.append(E.RequestIn(id=request_id, team_id=team_id, flavor=flavor, count=count,
                                         created_at=self.now - age_s, **fields))
        return request_id

    def reserve(self, team_id: int, count: int, flavor: str = "H100", *, starts_in_s: float = 0, lasts_s: float = 3600) -> int:
        rid = self._next()
        self.reservations.append(E.ReservationIn(id=rid, team_id=team_id, flavor=flavor, count=count,
                                                 starts_at=self.now + starts_in_s, ends_at=self.now + starts_in_s + lasts_s))
        return rid

    def snapshot(self) -> E.Snapshot:
        for team_id in {r.team_id for r in self.requests} | {a.team_id for a in self.allocations}:
            self.teams.setdefault(team_id, E.TeamIn(id=team_id))
        return E.Snapshot(now=self.now, nodes=list(self.nodes), devices=list(self.devices), allocations=list(self.allocations),
                          requests=list(self.requests), teams=list(self.teams.values()), grants=dict(self.grants),
                          reservations=list(self.reservations), **self.options)

    def decide(self) -> E.Decision:
        return E.decide(self.snapshot())


def placed(decision: E.Decision) -> dict[int, list[int]]:
    return {p.request_id: p.keys for p in decision.placements}


def codes(decision: E.Decision, request_id: int) -> list[str]:
    return [code for code, _ in decision.waiting[request_id].reasons]
