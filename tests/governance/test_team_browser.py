"""The team page and the profile page in a real browser (Chromium through Playwright): members
are added, re-roled and removed, and tokens created and revoked, through htmx without a reload;
errors appear in place."""

import re

import pytest

from governance.models import ApiToken, Membership, Role
from tests.factories import MembershipFactory, TeamFactory, UserFactory
from tests.conftest import browser_login as _login

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser, pytest.mark.timeout(120)]


def test_owner_manages_members_in_place(live_server, browser_page):
    team = TeamFactory(name="Vision", slug="vision")
    owner = UserFactory(username="olga")
    MembershipFactory(team=team, user=owner, role=Role.OWNER)
    UserFactory(username="nina")
    page = browser_page
    _login(page, live_server.url, "olga")
    page.goto(f"{live_server.url}/teams/vision/")
    page.evaluate("window.__notReloaded = true")

    form = page.locator("form.add-member")
    form.locator("input[name=username]").fill("ghost")
    form.get_by_role("button", name="Add member").click()
    page.get_by_text("No active user with this username.").wait_for()
    assert page.locator("form.add-member input[name=username]").get_attribute("aria-invalid") == "true"

    page.locator("form.add-member input[name=username]").fill("nina")
    page.locator("form.add-member select[name=role]").select_option("viewer")
    page.locator("form.add-member").get_by_role("button", name="Add member").click()
    page.get_by_text("nina added as viewer").wait_for()
    membership = Membership.objects.get(team=team, user__username="nina")
    assert membership.role == Role.VIEWER

    page.locator(f"#member-{membership.pk} select[name=role]").select_option("admin")
    page.get_by_text("nina is now admin").wait_for()
    assert Membership.objects.get(pk=membership.pk).role == Role.ADMIN

    page.once("dialog", lambda dialog: dialog.accept())
    page.locator(f"#member-{membership.pk}").get_by_role("button", name="Remove").click()
    page.get_by_text("nina removed").wait_for()
    assert not Membership.objects.filter(pk=membership.pk).exists()
    assert page.evaluate("window.__notReloaded") is True


def test_token_is_shown_once_and_revoked_in_place(live_server, browser_page):
    UserFactory(username="tara")
    page = browser_page
    _login(page, live_server.url, "tara")
    page.goto(f"{live_server.url}/profile/")
    page.evaluate("window.__notReloaded = true")
    page.locator("#tokens input[name=name]").fill("notebook")
    page.get_by_role("button", name="Create token").click()
    secret = page.locator("#new-token-secret").input_value()
    assert re.fullmatch(r"gpt_[0-9a-f]{12}_\S+", secret)
    token = ApiToken.objects.get(user__username="tara")
    assert token.secret_hash == ApiToken.hash_secret(secret)

    page.once("dialog", lambda dialog: dialog.accept())
    page.locator(f"#token-{token.pk}").get_by_role("button", name="Revoke").click()
    page.locator(f"#token-{token.pk} .badge", has_text="revoked").wait_for()
    assert page.evaluate("window.__notReloaded") is True
    assert ApiToken.objects.get(pk=token.pk).revoked_at is not None
    page.reload()
    assert secret not in page.content()
