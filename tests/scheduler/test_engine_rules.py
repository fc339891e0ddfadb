"""The engine's rules, one behaviour per test, on hand-built snapshots (no database)."""

import random

from scheduler import engine as E
from tests.scheduler.engine_fixtures import NOW, Fleet, codes, placed


def test_within_quota_goes_before_borrowing_then_priority_then_fair_share_then_age():
    f = Fleet()
    f.node(8)
    f.team(1, H100=2, borrow_limit=8)
    f.team(2, H100=8, usage=1_000_000)
    f.team(3, H100=8, usage=0)
    borrow = f.want(1, 4, age_s=10_000)  # team 1 beyond its 2 granted: borrowing
    batch = f.want(2, 1, priority=50, age_s=9_000)
    heavy = f.want(2, 1, age_s=5_000)
    light = f.want(3, 1, age_s=100)
    old_light = f.want(3, 1, age_s=200)
    d = f.decide()
    assert d.order == [old_light, light, heavy, batch, borrow]


def test_best_fit_prefers_the_node_left_fullest_and_one_nvlink_group():
    f = Fleet()
    a = f.node(8, group_size=4)
    b = f.node(8, group_size=4)
    f.hold(a[:5], team_id=9)  # node a: 3 free (5,6,7) across groups
    f.hold(b[:2], team_id=9)  # node b: 6 free: 2,3 in group 0 and 4..7 in group 1
    f.team(1, H100=16)
    one = f.want(1, 2)
    four = f.want(1, 4, age_s=10)
    d = f.decide()
    got = placed(d)
    assert set(got[one]) <= set(a), "2 GPUs go where 3 are free, leaving 1"
    assert got[four] == b[4:8], "4 GPUs: the whole NVLink group on node b"


def test_same_node_required_waits_with_reasons_when_free_gpus_are_scattered():
    f = Fleet()
    a = f.node(4)
    b = f.node(4)
    f.hold(a[:2], 9)
    f.hold(b[:2], 9)
    f.team(1, H100=8)
    r = f.want(1, 4, same_node=True)
    d = f.decide()
    assert r not in placed(d)
    assert codes(d, r)[:2] == ["no_capacity_together", "needs_one_node"]
    assert d.waiting[r].estimated_start == NOW + 3600
    spread = Fleet()
    a = spread.node(4)
    b = spread.node(4)
    spread.hold(a[:2], 9)
    spread.hold(b[:2], 9)
    spread.team(1, H100=8)
    r2 = spread.want(1, 4, same_node=False)
    assert sorted(placed(spread.decide())[r2]) == sorted(a[2:] + b[2:])


def test_borrowing_is_bounded_by_borrow_limit_and_lending_limits():
    f = Fleet()
    f.node(8)
    f.team(1, H100=0, borrow_limit=8)
    f.team(2, H100=8, lending_limit=2)
    r = f.want(1, 4)
    d = f.decide()
    assert codes(d, r) == ["blocked_by_policy"], "team 2 lends at most 2 of its 8 idle"
    small = Fleet()
    small.node(8)
    small.team(1, borrow_limit=2)
    small.team(2, H100=8, lending_limit=2)
    ok = small.want(1, 2)
    too_many = small.want(1, 1, age_s=1)
    d = small.decide()
    assert ok in placed(d)
    assert [p for p in d.placements if p.request_id == ok][0].borrowed
    assert [p for p in d.placements if p.request_id == ok][0].preemptible
    assert codes(d, too_many) == ["waiting_for_quota"]


def test_within_quota_request_reclaims_borrowed_gpus_with_the_fewest_victims():
    f = Fleet()
    keys = f.node(8)
    f.team(1, H100=8)
    f.team(2, borrow_limit=8)
    v1 = f.hold(keys[0:1], 2, borrowed=True)
    v2 = f.hold(keys[1:2], 2, borrowed=True)
    v4 = f.hold(keys[2:6], 2, borrowed=True)
    f.hold(keys[6:8], 1)  # team 1 already holds 2 of its 8
    r = f.want(1, 4)
    d = f.decide()
    assert [p.request_id for p in d.preemptions] == [v4], "one victim of 4 beats two of 1"
    assert d.preemptions[0].preempt_at == NOW + 300
    assert codes(d, r) == ["preemption_in_progress"]
    assert d.waiting[r].estimated_start == NOW + 300
    assert v1 and v2


def test_borrowed_victims_go_before_lower_priority_ones():
    f = Fleet()
    keys = f.node(4)
    f.team(1, H100=4)
    f.team(2, H100=2, borrow_limit=4)
    low = f.hold(keys[0:2], 2, preemptible=True, priority=0)
    borrowed = f.hold(keys[2:4], 2, borrowed=True)
    r = f.want(1, 2)
    d = f.decide()
    assert [p.request_id for p in d.preemptions] == [borrowed]
    assert low and r


def test_never_preempts_non_preemptible_within_quota_or_young_allocations():
    f = Fleet()
    keys = f.node(4)
    f.team(1, H100=4)
    f.team(2, H100=2, borrow_limit=2)
    f.hold(keys[0:2], 2)  # within team 2's quota, not preemptible
    f.hold(keys[2:4], 2, borrowed=True, age_s=30)  # borrowed, but younger than the minimum runtime
    r = f.want(1, 2)
    d = f.decide()
    assert d.preemptions == []
    assert "preemption_in_progress" not in codes(d, r)
    f.options["min_runtime_s"] = 10
    d = f.decide()
    assert len(d.preemptions) == 1


def test_preemption_in_progress_is_not_repeated():
    f = Fleet()
    keys = f.node(4)
    f.team(1, H100=4)
    f.team(2, borrow_limit=4)
    f.hold(keys, 2, borrowed=True, preempt_in_s=120)
    r = f.want(1, 4)
    d = f.decide()
    assert d.preemptions == []
    assert codes(d, r) == ["preemption_in_progress"]
    assert d.waiting[r].estimated_start == NOW + 120


def test_borrowing_request_does_not_reclaim_from_a_team_that_would_end_below_it():
    # Neither team has used anything: taking team 2's GPUs would leave it below team 1.
    f = Fleet()
    keys = f.node(4)
    f.team(1, borrow_limit=4)
    f.team(2, borrow_limit=4)
    f.hold(keys, 2, borrowed=True)
    r = f.want(1, 1)
    d = f.decide()
    assert d.preemptions == [] and r not in placed(d)


def test_borrowing_request_reclaims_borrowed_gpus_of_a_team_further_above_its_share():
    f = Fleet()
    keys = f.node(4)
    f.team(1, H100=1, borrow_limit=4)
    f.team(2, H100=1, borrow_limit=4, usage=500 * 3600.0)  # 500 GPU-hours used lately
    victim = f.hold(keys, 2, borrowed=True, priority=50)
    r = f.want(1, 2, priority=50)  # beyond team 1's single granted GPU: borrowing
    d = f.decide()
    assert [(p.request_id, p.for_request_id) for p in d.preemptions] == [(victim, r)]
    assert codes(d, r) == ["preemption_in_progress"]
    assert "fair share" in d.waiting[r].reasons[0][1]
    assert d.waiting[r].estimated_start == NOW + f.options.get("grace_s", 300.0)


def test_fair_share_reclaim_spares_higher_priority_and_young_work_and_can_be_turned_off():
    def fleet(**options):
        f = Fleet()
        keys = f.node(4)
        f.team(1, H100=1, borrow_limit=4)
        f.team(2, H100=1, borrow_limit=4, usage=500 * 3600.0)
        f.options.update(options)
        return f, keys

    f, keys = fleet()
    f.hold(keys, 2, borrowed=True, priority=100)  # an interactive session: higher than the batch request
    f.want(1, 2, priority=50)
    assert f.decide().preemptions == []

    f, keys = fleet()
    f.hold(keys, 2, borrowed=True, priority=50, age_s=60)  # younger than the minimum runtime
    f.want(1, 2, priority=50)
    assert f.decide().preemptions == []

    f, keys = fleet(fair_reclaim=False)
    f.hold(keys, 2, borrowed=True, priority=50)
    f.want(1, 2, priority=50)
    assert f.decide().preemptions == []

    f, keys = fleet()
    f.team(1, H100=1, borrow_limit=1)  # its own borrowing limit stops it, not the pool
    f.hold(keys, 2, borrowed=True, priority=50)
    r = f.want(1, 2, priority=50)
    d = f.decide()
    assert d.preemptions == [] and codes(d, r) == ["waiting_for_quota"]


def test_borrowing_requests_are_ordered_by_fair_share_before_priority():
    # Borrowing is sharing idle capacity: who gets it goes by fair share (as Kueue's fair sharing
    # orders cohorts), priority only breaks ties; within-quota requests keep priority first.
    f = Fleet()
    f.node(8)
    f.team(1, H100=1, borrow_limit=8, usage=100 * 3600.0)
    f.team(2, H100=1, borrow_limit=8, usage=0)
    heavy_interactive = f.want(1, 2, priority=100, age_s=500)
    light_batch = f.want(2, 2, priority=50, age_s=100)
    light_best_effort = f.want(2, 2, priority=0, age_s=900)
    d = f.decide()
    assert d.order == [light_batch, light_best_effort, heavy_interactive]


def test_mig_gpu_is_allocated_only_by_slices():
    f = Fleet()
    keys = f.node(2, "H200", mig={1: ["3g.71gb", "1g.18gb", "1g.18gb"]})
    f.team(1, H200=2, **{"1g.18gb": 2})
    whole = f.want(1, 2, "H200", same_node=True)
    sliced = f.want(1, 2, "1g.18gb", mig=True)
    d = f.decide()
    assert codes(d, whole)[0] == "no_capacity_together", "only one H200 of the node is whole"
    assert sorted(placed(d)[sliced]) == sorted(keys[2:4])


def test_whole_gpu_is_not_offered_while_a_slice_of_it_is_live():
    # The GPU left MIG mode while a slice allocation is still live: the whole GPU must wait for it.
    f = Fleet()
    f.node(1, "H200")
    gpu_key = f.devices[0].key
    f.devices.append(E.DeviceIn(key=-99, node_id=1, flavor="1g.18gb", mig=True, parent=gpu_key, index=0))
    f.hold([-99], 2)
    f.team(1, H200=1)
    r = f.want(1, 1, "H200")
    assert r not in placed(f.decide())
    f2 = Fleet()
    f2.node(1, "H200")
    gpu_key = f2.devices[0].key
    f2.devices.append(E.DeviceIn(key=-99, node_id=1, flavor="1g.18gb", mig=True, parent=gpu_key, index=0))
    f2.hold([gpu_key], 2)
    f2.team(1, **{"1g.18gb": 1})
    r2 = f2.want(1, 1, "1g.18gb", mig=True)
    assert r2 not in placed(f2.decide()), "no slice while the whole GPU is live"


def test_backfill_only_when_it_cannot_delay_the_blocked_request():
    f = Fleet()
    keys = f.node(4)
    f.team(1, H100=4)
    f.team(2, H100=4)
    f.hold(keys[:2], 9, ends_in_s=3600)
    big = f.want(1, 4, age_s=500)
    long_small = f.want(2, 1, max_duration_s=7200, age_s=400)
    short_small = f.want(2, 1, max_duration_s=1800, age_s=300)
    d = f.decide()
    assert d.waiting[big].estimated_start == NOW + 3600
    assert short_small in placed(d), "ends before the big request can start: backfilled"
    assert long_small not in placed(d)
    assert "queued_behind" in codes(d, long_small)


def test_advance_reservation_keeps_devices_free_for_its_window():
    f = Fleet()
    f.node(4)
    f.team(1, H100=4)
    f.team(2, H100=4)
    f.reserve(2, 4, starts_in_s=3600, lasts_s=7200)
    runs_into_window = f.want(1, 1, max_duration_s=7200)
    ends_before = f.want(1, 1, max_duration_s=1800, age_s=30)
    d = f.decide()
    assert ends_before in placed(d)
    assert runs_into_window not in placed(d)
    assert "reserved" in codes(d, runs_into_window)
    during = Fleet()
    during.node(4)
    during.team(1, H100=4)
    during.team(2, H100=4)
    during.reserve(2, 2, starts_in_s=-60, lasts_s=3600)
    outsider = during.want(1, 3)
    owner = during.want(2, 2, age_s=10)
    d = during.decide()
    assert owner in placed(d)
    assert outsider not in placed(d)


def test_nodes_not_ready_get_nothing_and_down_nodes_keep_their_allocations():
    f = Fleet()
    draining = f.node(4, state="draining")
    down = f.node(4, state="down")
    f.hold(down[:4], 2)
    f.team(1, H100=8)
    r = f.want(1, 1)
    d = f.decide()
    assert d.placements == []
    assert "node_draining" in codes(d, r)
    assert draining


def test_decision_does_not_depend_on_input_order():
    f = Fleet()
    for _ in range(4):
        f.node(8, group_size=4)
    f.node(4, "A100", group_size=2)
    for t in range(1, 5):
        f.team(t, H100=6, A100=2, borrow_limit=4, usage=t * 1000.0)
    rng = random.Random(7)
    for _ in range(40):
        f.want(rng.randint(1, 4), rng.choice([1, 1, 2, 4, 8]), rng.choice(["H100", "A100"]) if rng.random() < 0.2 else "H100",
               age_s=rng.randint(1, 1000), priority=rng.choice([0, 50, 100]), max_duration_s=rng.choice([1800, 3600, 28800]),
               same_node=True)
    base = f.decide()
    for seed in range(3):
        snap = f.snapshot()
        shuffler = random.Random(seed)
        for lst in (snap.nodes, snap.devices, snap.allocations, snap.requests, snap.teams):
            shuffler.shuffle(lst)
        again = E.decide(snap)
        assert placed(again) == placed(base)
        assert {k: (w.reasons, w.position_global, w.estimated_start) for k, w in again.waiting.items()} == \
               {k: (w.reasons, w.position_global, w.estimated_start) for k, w in base.waiting.items()}


def test_a_team_uses_its_active_reservation_first():
    f = Fleet()
    free_node = f.node(4)
    reserved_node = f.node(4)
    f.hold(reserved_node[:2], 9)  # node 2 is fuller: plain best fit would also pick it; make node 1 the tighter fit
    f.hold(free_node[:3], 9)
    f.team(1, H100=4)
    f.reserve(1, 2, starts_in_s=-60, lasts_s=3600)
    r = f.want(1, 1)
    d = f.decide()
    keys = placed(d)[r]
    assert keys[0] in reserved_node, "the reservation's own devices, not the best-fit single free GPU elsewhere"


def test_small_work_ahead_keeps_off_the_node_draining_for_a_large_request():
    def fleet(drain=True):
        f = Fleet()
        a = f.node(4)
        b = f.node(4)
        f.hold(a[1:], 9, ends_in_s=3600)  # node a: 1 free, the rest free in an hour
        f.hold(b[2:], 9, ends_in_s=5 * 3600)  # node b: 2 free, the rest in five hours
        f.team(1, H100=1)
        f.team(2, H100=1, borrow_limit=4)
        f.team(9, H100=8)
        f.options["drain_for_large"] = drain
        small = f.want(1, 1, age_s=10)  # within quota: ahead of the borrowing request
        large = f.want(2, 4, age_s=1000)
        return f, a, b, small, large

    f, a, b, small, large = fleet(drain=False)
    assert placed(f.decide())[small] == [a[0]], "best fit alone fills the node that frees first"
    f, a, b, small, large = fleet()
    d = f.decide()
    assert placed(d)[small][0] in b, "node a drains for the 4-GPU request"
    assert large not in placed(d) and d.waiting[large].estimated_start == NOW + 3600


def test_a_node_draining_for_a_large_request_is_still_used_when_nothing_else_fits():
    f = Fleet()
    a = f.node(4)
    b = f.node(4)
    f.hold(a[1:], 9, ends_in_s=3600)
    f.hold(b, 9, ends_in_s=5 * 3600)  # node b full
    f.team(1, H100=1)
    f.team(2, H100=1, borrow_limit=4)
    f.team(9, H100=8)
    small = f.want(1, 1, age_s=10)
    f.want(2, 4, age_s=1000)
    assert placed(f.decide())[small] == [a[0]], "a within-quota request is never kept waiting by a drain"


def test_reclaim_with_the_pool_used_up_takes_borrowed_gpus_from_any_node():
    # Team 3 lends at most 4 of its idle GPUs, and the heavy team 2 borrows all 4 (half of nodes b
    # and c, whose other halves team 3 uses). Node a is free, but the light team 1 may borrow
    # nothing until 4 borrowed GPUs come back: reclaiming them from other nodes is enough.
    f = Fleet()
    a = f.node(4)
    b = f.node(4)
    c = f.node(4)
    f.team(3, H100=12, lending_limit=4)
    f.team(2, borrow_limit=8, usage=500 * 3600.0)
    f.team(1, borrow_limit=4)
    f.hold(b[2:] + c[2:], 3, priority=50)
    on_b = f.hold(b[:2], 2, borrowed=True, priority=50)
    on_c = f.hold(c[:2], 2, borrowed=True, priority=50)
    r = f.want(1, 4, priority=50)
    d = f.decide()
    assert sorted(p.request_id for p in d.preemptions) == sorted([on_b, on_c])
    assert codes(d, r) == ["preemption_in_progress"]
    assert all(d.kept_for.get(k) == r for k in a), "node a is kept for it meanwhile"

    f.options["fair_reclaim"] = False
    assert f.decide().preemptions == []


def test_a_team_fair_share_weight_replaces_its_grants_as_its_weight():
    def order(weight_of_1):
        f = Fleet()
        f.node(8)
        f.team(1, H100=1, borrow_limit=8, usage=300 * 3600.0)
        f.teams[1] = E.TeamIn(id=1, borrow_limit=8, usage=300 * 3600.0, weight=weight_of_1)
        f.team(2, H100=1, borrow_limit=8, usage=100 * 3600.0)
        one = f.want(1, 2, priority=50, age_s=500)
        two = f.want(2, 2, priority=50, age_s=100)
        return f.decide().order, one, two

    got, one, two = order(None)
    assert got == [two, one], "same grants: the team that used less goes first"
    got, one, two = order(4)
    assert got == [one, two], "weight 4 against 1 granted GPU: 300 GPU-hours per 4 is less than 100 per 1"


def test_the_drain_is_for_the_first_large_request_quota_lets_run():
    f = Fleet()
    a = f.node(4)
    b = f.node(4)
    f.hold(a[1:], 9, ends_in_s=3600)  # node a frees first
    f.hold(b[2:], 9, ends_in_s=5 * 3600)
    f.team(1, H100=1)
    f.team(2, H100=1, usage=0)  # may not borrow: its 4-GPU request waits for quota, no drain for it
    f.team(3, H100=1, borrow_limit=4, usage=100 * 3600.0)
    f.team(9, H100=8)
    small = f.want(1, 1, age_s=10)
    blocked = f.want(2, 4, age_s=2000)
    large = f.want(3, 4, age_s=1000)
    d = f.decide()
    assert d.order.index(blocked) < d.order.index(large)
    assert codes(d, blocked) == ["waiting_for_quota"]
    assert placed(d)[small][0] in b, "node a drains for team 3's request"
