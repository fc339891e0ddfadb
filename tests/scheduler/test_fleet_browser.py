"""The Fleet page in a real browser (Chromium through Playwright): a platform admin drains and
undrains a node; htmx swaps only that node's row (the page is not reloaded)."""

import pytest

from scheduler.inventory import inventory_sync_all
from scheduler.models import Node
from tests.conftest import browser_login as _login
from tests.factories import UserFactory

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser, pytest.mark.timeout(120)]

def test_admin_drains_and_undrains_a_node_in_place(live_server, browser_page):
    inventory_sync_all()
    UserFactory(username="pat-browser", is_platform_admin=True)
    page = browser_page
    _login(page, live_server.url, "pat-browser")
    page.goto(f"{live_server.url}/fleet/")
    assert page.locator(".badge-sim").first.is_visible()
    page.evaluate("window.__notReloaded = true")

    row = page.locator('tr[data-node="dgx-h100-a"]')
    row.locator("input[name=reason]").fill("GPU firmware")
    row.get_by_role("button", name="Drain").click()
    row.locator(".badge.state-draining").wait_for()
    assert "drain: GPU firmware" in row.inner_text()
    assert Node.objects.get(name="dgx-h100-a").state == Node.State.DRAINING

    row.get_by_role("button", name="Undrain").click()
    row.locator(".badge.state-ready").wait_for()
    assert Node.objects.get(name="dgx-h100-a").state == Node.State.READY
    assert page.evaluate("window.__notReloaded") is True  # swapped in place, never a full reload


def test_admin_confirms_a_down_node_gone_after_the_browser_asks(live_server, browser_page):
    from django.utils import timezone

    from scheduler.inventory import nodes_mark_down

    inventory_sync_all()
    nodes_mark_down(now=timezone.now() + timezone.timedelta(hours=1))
    UserFactory(username="pat-browser", is_platform_admin=True)
    page = browser_page
    _login(page, live_server.url, "pat-browser")
    page.goto(f"{live_server.url}/fleet/")
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.accept()))

    row = page.locator('tr[data-node="a100-pcie-a"]')
    row.get_by_role("button", name="Confirm gone").click()
    row.locator(".badge.state-failed", has_text="gone").wait_for()
    assert dialogs and "a100-pcie-a" in dialogs[0]
    assert Node.objects.get(name="a100-pcie-a").gone_confirmed_at is not None
    assert row.get_by_role("button", name="Confirm gone").count() == 0
