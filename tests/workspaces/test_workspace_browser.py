"""A real browser (Chromium, driven by Playwright) uses JupyterLab through the portal's proxy:
the lab's page and assets load, a notebook opens, a cell runs on the kernel over the proxied
websocket, and the notebook saves (a browser POST/PUT with JupyterLab's own XSRF handling)."""

import datetime

import pytest

from tests.workspaces.lifecycle_support import (fleet, h100_quota, lab_image, portal_server,  # noqa: F401
                                                session_cookie, stop_labs)
from workspaces import services
from workspaces.launchers.local import _root
from workspaces.models import Workspace

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


def test_a_notebook_runs_a_cell_and_saves_through_the_proxy(chromium_path, member, team, fleet, h100_quota, lab_image,
                                                            portal_server, stop_labs):
    from playwright.sync_api import expect, sync_playwright

    workspace = services.workspace_create(user=member, team=team, image=lab_image, gpu_count=1, flavor="H100",
                                          duration=datetime.timedelta(hours=1), name="browser")
    workspace.refresh_from_db()
    assert workspace.state == Workspace.State.RUNNING, workspace.error
    base = f"http://{portal_server}"
    cookies = [{"name": k, "value": v, "url": base} for k, v in session_cookie(member).items()]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path, args=["--no-sandbox"])
        try:
            context = browser.new_context()
            context.add_cookies(cookies)
            page = context.new_page()
            refused, puts = [], []
            page.on("request", lambda r: puts.append((r.method, r.url)) if r.method in ("PUT", "POST", "PATCH") else None)
            page.on("response", lambda r: refused.append((r.status, r.request.method, r.url)) if r.status >= 400 else None)
            page.goto(f"{base}/w/{workspace.pk}/lab", timeout=60_000)
            assert workspace.lab_token not in page.content()
            page.locator('.jp-LauncherCard[data-category="Notebook"]').first.click(timeout=120_000)
            # Type only once the kernel (reached over the proxied websocket) says it is idle.
            expect(page.locator(".jp-StatusBar-Widget", has_text="Idle").first).to_be_visible(timeout=120_000)
            cell = page.locator(".jp-Notebook .jp-Cell .cm-content").first
            cell.click(timeout=30_000)
            page.keyboard.type("6*7")
            page.keyboard.press("Shift+Enter")
            expect(page.locator(".jp-OutputArea-output").first).to_contain_text("42", timeout=60_000)
            saved = _root() / "vision" / member.username / "Untitled.ipynb"
            page.locator(".lm-MenuBar-itemLabel", has_text="File").first.click()
            page.locator('.lm-Menu-item[data-command="docmanager:save"]').first.click(timeout=10_000)
            page.get_by_role("button", name="Rename and Save").click(timeout=30_000)  # JupyterLab asks on first save
            for _ in range(100):
                if saved.exists() and "6*7" in saved.read_text():
                    break
                page.wait_for_timeout(200)
        finally:
            browser.close()
    assert "6*7" in saved.read_text(), (refused, puts)
    assert not [r for r in refused if r[0] in (401, 403)], refused


def test_launch_from_the_portal_then_open_the_lab(chromium_path, member, team, fleet, h100_quota, lab_image,
                                                  portal_server, stop_labs):
    """The user's path in a browser: the launch form (validated in place), the workspace page
    following the state live, "Open JupyterLab", and the lab answering through the proxy."""
    from playwright.sync_api import expect, sync_playwright

    base = f"http://{portal_server}"
    cookies = [{"name": k, "value": v, "url": base} for k, v in session_cookie(member).items()]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path, args=["--no-sandbox"])
        try:
            context = browser.new_context()
            context.add_cookies(cookies)
            page = context.new_page()
            page.goto(f"{base}/workspaces/new")
            page.select_option("#id_flavor", "H100")
            page.fill("#id_gpu_count", "9")
            page.fill("#id_duration_hours", "2")
            expect(page.locator("#checks")).to_contain_text("At most 8 GPUs per workspace", timeout=30_000)
            page.fill("#id_gpu_count", "2")
            page.fill("#id_name", "from-the-browser")
            expect(page.locator("#capacity-hint")).to_contain_text("H100", timeout=30_000)
            page.get_by_role("button", name="Launch").click()
            # Tests run tasks eagerly: the launch completes within the request; the page then shows it live.
            expect(page.locator("#workspace-state")).to_have_text("running", timeout=120_000)
            with context.expect_page() as lab_tab:
                page.locator("#open-lab").click()
            lab = lab_tab.value
            expect(lab.locator(".jp-LauncherCard").first).to_be_visible(timeout=120_000)
            lab_html = lab.content()
        finally:
            browser.close()
    workspace = Workspace.objects.get(name="from-the-browser")  # (the ORM is not for Playwright's event loop)
    assert workspace.state == Workspace.State.RUNNING and workspace.lab_token not in lab_html
