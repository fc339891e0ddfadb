"""Accounts are managed in the Django admin by platform admins; each change is audited, and the
rule-bearing models are read-only there (they change only through audited services)."""

import pytest

from governance.models import AuditEvent, User

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_admin(platform_admin):
    platform_admin.is_staff = platform_admin.is_superuser = True
    platform_admin.save()
    return platform_admin


def test_granting_a_platform_role_in_the_admin_is_audited(client, staff_admin, member):
    client.force_login(staff_admin)
    page = client.get(f"/django-admin/governance/user/{member.pk}/change/")
    assert page.status_code == 200
    form = page.context["adminform"].form
    data = {k: v for k, v in form.initial.items() if v is not None and k not in ("groups", "user_permissions", "password", "last_login", "date_joined")}
    data.update({"is_approver": "on", "is_active": "on", "date_joined_0": "2026-01-01", "date_joined_1": "00:00:00"})
    response = client.post(f"/django-admin/governance/user/{member.pk}/change/", data)
    assert response.status_code == 302, response.content[:2000]
    member.refresh_from_db()
    assert member.is_approver
    event = AuditEvent.objects.get(action="user.update")
    assert event.actor_id == staff_admin.pk and event.changes == {"is_approver": [False, True]}


def test_teams_and_memberships_are_read_only_in_the_admin(client, staff_admin, team):
    client.force_login(staff_admin)
    assert client.get("/django-admin/governance/team/").status_code == 200
    assert client.get("/django-admin/governance/team/add/").status_code == 403
    assert client.get("/django-admin/governance/membership/add/").status_code == 403
    assert client.post(f"/django-admin/governance/team/{team.pk}/delete/", {"post": "yes"}).status_code == 403
    assert User.objects.filter(pk=staff_admin.pk).exists()
