"""Reservations through the API: platform admins reserve and cancel, fleet viewers read; bad
input is a 400 that changes nothing."""

import datetime
import json

import pytest
from django.urls import reverse
from django.utils import timezone

from governance.models import AuditEvent
from scheduler.inventory import node_register
from scheduler.models import Reservation
from tests.scheduler.inventory_helpers import gpu, node_info

pytestmark = pytest.mark.django_db


@pytest.fixture
def h100s():
    return node_register(info=node_info("n1", [gpu("n1", i) for i in range(4)]))


def _body(**overrides):
    start = timezone.now() + datetime.timedelta(days=1)
    return {"team": "vision", "flavor": "H100", "count": 2, "starts_at": start.isoformat(),
            "ends_at": (start + datetime.timedelta(hours=4)).isoformat(), "note": "training sprint", **overrides}


def test_reserve_list_and_cancel(client, platform_admin, auditor, team, h100s):
    client.force_login(platform_admin)
    response = client.post(reverse("api-reservation-list"), data=json.dumps(_body()), content_type="application/json")
    assert response.status_code == 201, response.content
    created = response.json()
    assert created["team"] == "vision" and created["count"] == 2 and created["created_by"] == platform_admin.username
    assert AuditEvent.objects.filter(action="reservation.create").count() == 1

    client.force_login(auditor)
    assert [r["id"] for r in client.get(reverse("api-reservation-list")).json()["results"]] == [created["id"]]
    assert client.delete(reverse("api-reservation-detail", args=[created["id"]])).status_code == 403

    client.force_login(platform_admin)
    assert client.delete(reverse("api-reservation-detail", args=[created["id"]])).status_code == 204
    assert Reservation.objects.count() == 0
    assert AuditEvent.objects.filter(action="reservation.cancel").count() == 1


@pytest.mark.parametrize(("overrides", "field"), [
    ({"count": 0}, "count"),
    ({"count": "2"}, "count"),
    ({"count": 99}, "count"),
    ({"flavor": "B200"}, "flavor"),
    ({"team": "nope"}, "team"),
    ({"ends_at": (timezone.now() - datetime.timedelta(days=1)).isoformat()}, "ends_at"),
    ({"colour": "red"}, "colour"),
])
def test_bad_reservation_is_400_and_changes_nothing(client, platform_admin, team, h100s, overrides, field):
    client.force_login(platform_admin)
    before = AuditEvent.objects.count()
    response = client.post(reverse("api-reservation-list"), data=json.dumps(_body(**overrides)), content_type="application/json")
    assert response.status_code == 400, response.content
    assert field in response.json()["fields"]
    assert Reservation.objects.count() == 0
    assert AuditEvent.objects.count() == before


def test_overbooking_is_a_conflict(client, platform_admin, team, h100s):
    client.force_login(platform_admin)
    assert client.post(reverse("api-reservation-list"), data=json.dumps(_body(count=3)), content_type="application/json").status_code == 201
    response = client.post(reverse("api-reservation-list"), data=json.dumps(_body(count=2)), content_type="application/json")
    assert response.status_code == 409
    assert Reservation.objects.count() == 1
