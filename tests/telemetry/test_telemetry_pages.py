"""Telemetry pages: the GPU page, a team's GPUs, the fleet heatmap fragment (fixed query count),
history JSON, and the charts partials the workspace and node pages include."""

import json

import pytest
from django.template.loader import render_to_string
from django.test import RequestFactory

from scheduler import telemetry
from scheduler.models import GpuDevice, MigSlice, Node
from tests.telemetry.conftest import gpu_of


@pytest.fixture
def sampled(fleet):
    for name in fleet:
        telemetry.telemetry_sample_node(node_name=name)
    return fleet


def _charts_config(response, cid):
    html = response.content.decode()
    start = html.index(f'<script id="{cid}" type="application/json">') + len(f'<script id="{cid}" type="application/json">')
    return json.loads(html[start:html.index("</script>", start)])


def test_gpu_page_shows_facts_holder_and_live_charts(client, sampled, team, member, allocate):
    gpu = gpu_of(sampled["tel-a"], 0)
    allocate(team, member, gpu=gpu)
    client.force_login(member)
    response = client.get(f"/fleet/gpus/{gpu.uuid}/")
    assert response.status_code == 200
    html = response.content.decode()
    assert gpu.uuid in html and "Vision" in html and "simulated" in html
    config = _charts_config(response, "gpu-charts")
    assert config["subscribe"] == [{"target": "gpu", "id": gpu.uuid}]
    assert config["history"] == [f"/telemetry/gpus/{gpu.uuid}/history/"]
    assert 'src="/static/portal/telemetry.js"' in html and "vendor/chart.umd.min.js" in html


def test_gpu_page_lists_health_events(client, sampled, platform_admin):
    bad = gpu_of(sampled["tel-faulty"], 1)
    client.force_login(platform_admin)
    html = client.get(f"/fleet/gpus/{bad.uuid}/").content.decode()
    assert "gpu_lost" in html and "unhealthy" in html


def test_team_gpus_page_lists_held_devices_and_subscribes_to_the_team(client, sampled, team, viewer, member, allocate):
    mig = MigSlice.objects.get(gpu__node=sampled["tel-b"], index=1)
    allocate(team, member, mig_slice=mig)
    client.force_login(viewer)
    response = client.get("/teams/vision/gpus/")
    assert response.status_code == 200
    assert "MIG 1 (3g.71gb)" in response.content.decode()
    config = _charts_config(response, "team-charts")
    assert config["subscribe"] == [{"target": "team", "id": "vision"}]


def test_history_json_and_bad_window(client, sampled, team, member, allocate):
    gpu = gpu_of(sampled["tel-a"], 1)
    allocate(team, member, gpu=gpu)
    client.force_login(member)
    data = client.get(f"/telemetry/gpus/{gpu.uuid}/history/?window=live").json()
    assert data["resolution_s"] == 0
    (series,) = data["series"]
    assert series["key"] == f"{gpu.uuid}:-1" and series["label"] == "tel-a/gpu1" and len(series["points"]) == 1
    assert client.get("/telemetry/teams/vision/history/?window=day").json()["resolution_s"] == 60
    for bad in ("forever", "5", "999999999"):
        response = client.get(f"/telemetry/gpus/{gpu.uuid}/history/?window={bad}")
        assert response.status_code == 400 and response.json()["error"] == "invalid_window"


def test_heatmap_fragment_shows_every_gpu_and_slice_with_a_fixed_number_of_queries(client, sampled, auditor, django_assert_max_num_queries):
    client.force_login(auditor)
    with django_assert_max_num_queries(14) as small:
        response = client.get("/telemetry/heatmap/")
    html = response.content.decode()
    for gpu in GpuDevice.objects.all():
        assert f'data-key="{gpu.uuid}:-1"' in html
    for sl in MigSlice.objects.select_related("gpu"):
        assert f'data-key="{sl.gpu.uuid}:{sl.index}"' in html
    assert "heat-unhealthy" in html  # the faulty GPU
    # a bigger fleet costs no more queries
    node = Node.objects.create(name="tel-big", simulated=True)
    for i in range(16):
        GpuDevice.objects.create(node=node, uuid=f"GPU-big-{i}", index=i, model="L4", memory_mb=24576)
    with django_assert_max_num_queries(len(small.captured_queries)):
        client.get("/telemetry/heatmap/")


def test_heatmap_filters_by_model_and_team(client, sampled, auditor, team, member, allocate):
    allocate(team, member, gpu=gpu_of(sampled["tel-a"], 3))
    client.force_login(auditor)
    html = client.get("/telemetry/heatmap/?model=H200").content.decode()
    assert "tel-b" in html and "tel-a" not in html
    html = client.get(f"/telemetry/heatmap/?team={team.pk}").content.decode()
    assert html.count('class="heat-cell') == 1 and gpu_of(sampled["tel-a"], 3).uuid in html


def test_workspace_charts_partial_subscribes_to_exactly_its_devices(sampled, team, member, allocate):
    gpu = gpu_of(sampled["tel-a"], 2)
    mig = MigSlice.objects.get(gpu__node=sampled["tel-b"], index=0)
    allocation = allocate(team, member, gpu=gpu)
    allocate(team, member, mig_slice=mig)

    from workspaces.models import Image, Workspace

    image = Image.objects.create(name="tel-lab", reference="portal/lab:test")
    workspace = Workspace.objects.create(team=team, owner=member, name="notebook", image=image, state="running",
                                         allocation_request=allocation.request)
    html = render_to_string("workspaces/_gpu_charts.html", {"workspace": workspace}, request=RequestFactory().get("/"))
    assert "tel-a/gpu2" in html
    start = html.index('type="application/json">') + len('type="application/json">')
    config = json.loads(html[start:html.index("</script>", start)])
    assert config["subscribe"] == [{"target": "gpu", "id": gpu.uuid}]
    assert config["only"] == [f"{gpu.uuid}:-1"]


def test_node_charts_partial(sampled):
    node = sampled["tel-b"]
    html = render_to_string("scheduler/_node_charts.html", {"node": node}, request=RequestFactory().get("/"))
    start = html.index('type="application/json">') + len('type="application/json">')
    config = json.loads(html[start:html.index("</script>", start)])
    assert config["subscribe"] == [{"target": "node", "id": node.pk}] and config["whole_only"] is True


def test_team_gpus_page_query_count_does_not_grow_with_allocations(client, fleet, team, member, allocate, django_assert_max_num_queries):
    allocate(team, member, gpu=gpu_of(fleet["tel-a"], 0))
    client.force_login(member)
    with django_assert_max_num_queries(20) as one:
        assert client.get("/teams/vision/gpus/").status_code == 200
    for index in (1, 2, 3):
        allocate(team, member, gpu=gpu_of(fleet["tel-a"], index))
    allocate(team, member, mig_slice=MigSlice.objects.get(gpu__node=fleet["tel-b"], index=0))
    with django_assert_max_num_queries(len(one.captured_queries)):
        assert client.get("/teams/vision/gpus/").status_code == 200
