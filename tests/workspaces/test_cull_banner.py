"""The idle warning reaches the owner on the workspace page (W1's page, this culler's selector),
and the extend action there takes it away again."""

import datetime

from django.urls import reverse
from django.utils import timezone

from tests.workspaces.housekeeping_support import node_with_gpus, placed_workspace
from workspaces.models import Workspace


def test_the_workspace_page_shows_the_idle_warning_until_the_owner_extends(client, team, owner):
    now = timezone.now()
    workspace = placed_workspace(owner=owner, team=team, node=node_with_gpus(count=1), gpus=1,
                                 state=Workspace.State.RUNNING, launcher="local", running_at=now - datetime.timedelta(hours=1),
                                 idle_since=now - datetime.timedelta(minutes=55), idle_warned_at=now - datetime.timedelta(minutes=1))
    client.force_login(owner)
    url = reverse("workspace-detail", args=[workspace.pk])

    page = client.get(url).content.decode()

    assert 'id="idle-banner"' in page and "has been idle for 55 min" in page
    stop_at = timezone.localtime(max(workspace.idle_since + datetime.timedelta(minutes=60),
                                     workspace.idle_warned_at + datetime.timedelta(minutes=15)))
    assert f"will be stopped at {stop_at:%H:%M}" in page

    response = client.post(reverse("workspace-action", args=[workspace.pk, "extend"]), {"hours": "1"})
    assert response.status_code in (200, 302)
    workspace.refresh_from_db()
    assert workspace.idle_warned_at is None
    assert 'id="idle-banner"' not in client.get(url).content.decode()
