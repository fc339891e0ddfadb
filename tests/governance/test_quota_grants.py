"""Quota grants: team owners see their teams' grants, platform admins see all and add, edit and
end them; every change is audited and tells the scheduler (the quota_changed signal, on commit)."""

import pytest
from django.utils import timezone

from governance.models import AuditEvent, QuotaGrant
from governance.signals import quota_changed
from tests.factories import QuotaGrantFactory
from tests.governance.helpers import assert_unchanged, snapshot

pytestmark = pytest.mark.django_db


@pytest.fixture
def quota_signals():
    received = []

    def receiver(sender, team_id, grant_id, **kwargs):
        received.append((team_id, grant_id))

    quota_changed.connect(receiver)
    yield received
    quota_changed.disconnect(receiver)


def test_owner_sees_only_their_teams_grants(client, owner, team, other_team):
    QuotaGrantFactory(team=team, flavor="H100", count=4)
    QuotaGrantFactory(team=other_team, flavor="A100", count=9)
    client.force_login(owner)
    html = client.get("/quota/").content.decode()
    assert "H100" in html and "A100" not in html and "New grant" not in html


def test_platform_admin_creates_edits_and_ends_a_grant(client, platform_admin, team, quota_signals, django_capture_on_commit_callbacks):
    client.force_login(platform_admin)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/quota/grants/new/", {"team": "vision", "flavor": "H100", "count": "4"})
    assert response.status_code == 302
    grant = QuotaGrant.objects.get()
    assert (grant.team, grant.flavor, grant.count, grant.ends_at, grant.created_by) == (team, "H100", 4, None, platform_admin)
    assert quota_signals == [(team.pk, grant.pk)]

    with django_capture_on_commit_callbacks(execute=True):
        client.post(f"/quota/grants/{grant.pk}/", {"flavor": "H100", "count": "6", "starts_at": "", "ends_at": ""})
    grant.refresh_from_db()
    assert grant.count == 6 and len(quota_signals) == 2

    with django_capture_on_commit_callbacks(execute=True):
        client.post(f"/quota/grants/{grant.pk}/end/")
    grant.refresh_from_db()
    assert grant.ends_at is not None and grant.ends_at <= timezone.now() and grant.state == "ended"
    assert len(quota_signals) == 3
    assert list(AuditEvent.objects.values_list("action", flat=True)) == ["quota_grant.create", "quota_grant.update", "quota_grant.update"]
    assert "<code>H100</code>" not in client.get("/quota/").content.decode()  # ended grants are hidden by default
    assert "ended" in client.get("/quota/?ended=1").content.decode()


def test_bad_grant_input_is_shown_in_the_form_and_changes_nothing(client, platform_admin, team, quota_signals):
    client.force_login(platform_admin)
    before = snapshot()
    for data, message in (({"team": "vision", "flavor": "H100", "count": "0"}, "greater than or equal to 1"),
                          ({"team": "nope", "flavor": "H100", "count": "1"}, "Select a valid choice"),
                          ({"team": "vision", "flavor": "H100", "count": "2", "starts_at": "2026-05-02T10:00", "ends_at": "2026-05-01T10:00"}, "Must be after the start")):
        response = client.post("/quota/grants/new/", data)
        assert response.status_code == 400 and message in response.content.decode()
    assert_unchanged(before)
    assert quota_signals == []


def test_no_signal_when_the_transaction_rolls_back(platform_admin, team, quota_signals, django_capture_on_commit_callbacks):
    from django.db import transaction

    from governance import services

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        try:
            with transaction.atomic():
                services.quota_grant_create(actor=platform_admin, team=team, flavor="H100", count=1)
                raise RuntimeError("abort")
        except RuntimeError:
            pass
    assert callbacks == [] and quota_signals == [] and not QuotaGrant.objects.exists()
