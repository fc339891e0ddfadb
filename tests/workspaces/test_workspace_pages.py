"""Workspace pages: list (rows refresh through htmx), the launch form validating in place, the
workspace page's live status fragment and its buttons; query counts pinned on the list."""

import datetime

import pytest
from django.urls import reverse

from governance.models import AuditEvent
from scheduler.models import AllocationRequest
from tests.workspaces.lifecycle_support import fleet, h100_quota, lab_image  # noqa: F401
from workspaces import services
from workspaces.models import Workspace

pytestmark = pytest.mark.django_db
HTMX = {"HTTP_HX_REQUEST": "true"}


def _ws(user, team, image, **kw):
    return services.workspace_create(user=user, team=team, image=image, gpu_count=1, flavor="H100",
                                     duration=datetime.timedelta(hours=1), **kw)


def test_list_shows_own_and_team_workspaces_and_refreshes_rows(client, member, owner, outsider, team, fleet, lab_image):
    mine = _ws(member, team, lab_image, name="mine")
    theirs = _ws(owner, team, lab_image, name="team-mates")
    client.force_login(member)
    page = client.get(reverse("workspace-list"))
    assert page.status_code == 200
    body = page.content.decode()
    assert "mine" in body and "team-mates" in body and 'hx-trigger="every 3s"' in body
    rows = client.get(reverse("workspace-list"), **HTMX).content.decode()
    assert rows.lstrip().startswith("<tbody") and f"workspace-{mine.pk}" in rows and f"workspace-{theirs.pk}" in rows
    client.force_login(outsider)
    assert f"workspace-{mine.pk}" not in client.get(reverse("workspace-list"), **HTMX).content.decode()


def test_list_page_query_count_does_not_grow_with_rows(client, member, team, fleet, lab_image, django_assert_max_num_queries):
    team.policy.max_workspaces_per_user = 50
    team.policy.save()
    for i in range(3):
        _ws(member, team, lab_image, name=f"w{i}")
    client.force_login(member)
    client.get(reverse("workspace-list"), **HTMX)
    with django_assert_max_num_queries(8) as few:
        client.get(reverse("workspace-list"), **HTMX)
    for i in range(3, 15):
        _ws(member, team, lab_image, name=f"w{i}")
    with django_assert_max_num_queries(len(few.captured_queries)):
        response = client.get(reverse("workspace-list"), **HTMX)
    assert response.content.decode().count("<tr id=\"workspace-") == 15


def test_new_form_validates_in_place_with_policy_and_capacity(client, member, team, fleet, h100_quota, lab_image):
    client.force_login(member)
    page = client.get(reverse("workspace-new"))
    assert page.status_code == 200 and "H100" in page.content.decode()
    check = client.get(reverse("workspace-new"), {"team": "vision", "image": "lab", "flavor": "H100", "gpu_count": 9,
                                                  "duration_hours": 1, "sharing": "private"}, **HTMX)
    text = check.content.decode()
    assert check.status_code == 200 and '<div id="checks"' in text
    assert 'id="image-field" hx-swap-oob="true"' in text  # the team's allowed images, refreshed in place
    assert "At most 8 GPUs per workspace in team vision" in text
    ok = client.get(reverse("workspace-new"), {"team": "vision", "image": "lab", "flavor": "H100", "gpu_count": 2,
                                               "duration_hours": 1, "sharing": "private"}, **HTMX).content.decode()
    assert "16 H100</strong> free now" in ok and "quota left: <strong>8</strong>" in ok


def test_launch_from_the_form_creates_a_pending_workspace(client, member, team, fleet, h100_quota, lab_image):
    client.force_login(member)
    response = client.post(reverse("workspace-new"), {"team": "vision", "image": "lab", "flavor": "H100", "gpu_count": 2,
                                                      "duration_hours": 2, "sharing": "team", "name": "from-form"})
    workspace = Workspace.objects.get(name="from-form")
    assert response.status_code == 302 and response["Location"] == reverse("workspace-detail", args=[workspace.pk])
    assert workspace.sharing == "team" and workspace.allocation_request.count == 2


def test_bad_launch_form_changes_nothing(client, member, team, fleet, h100_quota, lab_image):
    client.force_login(member)
    before = (Workspace.objects.count(), AllocationRequest.objects.count(), AuditEvent.objects.count())
    response = client.post(reverse("workspace-new"), {"team": "vision", "image": "lab", "flavor": "H100", "gpu_count": 9,
                                                      "duration_hours": 2, "sharing": "private"})
    assert response.status_code == 400 and "At most 8 GPUs per workspace" in response.content.decode()
    assert (Workspace.objects.count(), AllocationRequest.objects.count(), AuditEvent.objects.count()) == before


def test_detail_fragment_shows_pending_reasons_and_buttons(client, member, team, fleet, lab_image):
    workspace = _ws(member, team, lab_image)
    AllocationRequest.objects.filter(pk=workspace.allocation_request_id).update(
        pending_reasons=[{"code": "waiting_for_quota", "message": "Team vision has no H100 quota left"}],
        queue_position_team=1, queue_position_global=4)
    client.force_login(member)
    fragment = client.get(reverse("workspace-detail", args=[workspace.pk]), **HTMX).content.decode()
    assert 'hx-trigger="every 2s"' in fragment and "waiting_for_quota" in fragment and "4 overall" in fragment
    assert ">Cancel</button>" in fragment and "Open JupyterLab" not in fragment
    page = client.get(reverse("workspace-detail", args=[workspace.pk])).content.decode()
    assert "workspace-status" in page


def test_failed_workspace_page_shows_the_real_error_and_restart(client, member, team, fleet, lab_image):
    workspace = _ws(member, team, lab_image)
    services.workspace_fail(workspace=workspace, reason='could not select device driver "" with capabilities: [[gpu]]')
    client.force_login(member)
    page = client.get(reverse("workspace-detail", args=[workspace.pk])).content.decode()
    assert "could not select device driver" in page and ">Restart</button>" in page
    assert "hx-trigger" not in page.split('id="workspace-status"')[1].split(">")[0]  # ended: no more polling


def test_cancel_through_htmx_swaps_the_status(client, member, team, fleet, lab_image):
    workspace = _ws(member, team, lab_image)
    client.force_login(member)
    response = client.post(reverse("workspace-action", args=[workspace.pk, "cancel"]), **HTMX)
    assert response.status_code == 200 and "cancelled" in response.content.decode()
    workspace.refresh_from_db()
    assert workspace.state == Workspace.State.STOPPED


def test_a_refused_action_says_why_and_changes_nothing(client, member, team, fleet, lab_image):
    workspace = _ws(member, team, lab_image)
    client.force_login(member)
    events = AuditEvent.objects.count()
    response = client.post(reverse("workspace-action", args=[workspace.pk, "stop"]), **HTMX)
    assert response.status_code == 409 and "Only a running workspace can be stopped" in response.content.decode()
    assert AuditEvent.objects.count() == events


def test_launch_form_starts_from_a_flavor_the_team_is_granted(client, member, team, fleet, lab_image):
    from tests.factories import QuotaGrantFactory

    QuotaGrantFactory(team=team, flavor="1g.18gb", count=2)
    QuotaGrantFactory(team=team, flavor="H200", count=4)
    client.force_login(member)
    form = client.get(reverse("workspace-new")).context["form"]
    assert form["flavor"].value() == "H200"  # the largest active grant; the inventory's first model is A100


def test_launch_form_offers_a_granted_mig_profile_as_a_slice(client, member, team, fleet, lab_image):
    from tests.factories import QuotaGrantFactory

    QuotaGrantFactory(team=team, flavor="1g.18gb", count=2)
    client.force_login(member)
    assert client.get(reverse("workspace-new")).context["form"]["flavor"].value() == "mig:1g.18gb"
