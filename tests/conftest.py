"""Shared fixtures: one user per role around one team, and service availability.

Services that may be absent on a newcomer's machine (Redis, Docker, Chromium) skip their tests
there; with PORTAL_REQUIRE_SERVICES=1 (set by .ci/run) a missing service fails the run instead."""

import contextlib
import os
import shutil
import socket
import threading
import time

import pytest
from django.conf import settings

from governance.models import Role
from tests.factories import MembershipFactory, TeamFactory, UserFactory

REQUIRE_SERVICES = os.environ.get("PORTAL_REQUIRE_SERVICES") == "1"

ROLES = ["anonymous", "outsider", "viewer", "member", "admin", "owner", "approver", "auditor", "platform_admin"]


def service_missing(what: str) -> None:
    """Skip locally, fail in CI: CI must never pass by skipping real-service tests."""
    if REQUIRE_SERVICES:
        pytest.fail(f"{what} is required in CI (PORTAL_REQUIRE_SERVICES=1) but is unavailable")
    pytest.skip(f"{what} unavailable on this machine")


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def redis_url():
    url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    if not _port_open("127.0.0.1", 6379):
        service_missing("Redis")
    return url


@pytest.fixture
def docker_client():
    try:
        import docker

        client = docker.from_env()
        client.ping()
    except Exception:  # noqa: BLE001
        service_missing("Docker engine")
    return client


@pytest.fixture
def chromium_path():
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        service_missing("Chromium")
    return path


@pytest.fixture
def team(db):
    return TeamFactory(name="Vision", slug="vision")


@pytest.fixture
def other_team(db):
    return TeamFactory(name="Speech", slug="speech")


def _member(team, username, role):
    user = UserFactory(username=username)
    MembershipFactory(team=team, user=user, role=role)
    return user


@pytest.fixture
def owner(team):
    return _member(team, "olivia-owner", Role.OWNER)


@pytest.fixture
def team_admin(team):
    return _member(team, "adam-admin", Role.ADMIN)


@pytest.fixture
def member(team):
    return _member(team, "mia-member", Role.MEMBER)


@pytest.fixture
def viewer(team):
    return _member(team, "victor-viewer", Role.VIEWER)


@pytest.fixture
def outsider(other_team):
    return _member(other_team, "oscar-outsider", Role.OWNER)


@pytest.fixture
def approver(db):
    return UserFactory(username="april-approver", is_approver=True)


@pytest.fixture
def auditor(db):
    return UserFactory(username="audrey-auditor", is_auditor=True)


@pytest.fixture
def platform_admin(db):
    return UserFactory(username="pat-platform", is_platform_admin=True)


@pytest.fixture
def user_for_role(request, team, other_team):
    """Resolve a role name (one of ROLES) to a user, or None for anonymous."""

    def resolve(role: str):
        if role == "anonymous":
            return None
        fixture = {"admin": "team_admin"}.get(role, role)
        return request.getfixturevalue(fixture)

    return resolve


@pytest.fixture(autouse=True)
def _isolated_settings(settings, tmp_path):
    settings.PORTAL_TASKS = "eager"
    settings.PORTAL_WORKSPACE_ROOT = tmp_path / "workspaces"
    settings.AXES_ENABLED = True
    settings.SECURE_SSL_REDIRECT = False  # the test client speaks plain HTTP; TLS is the proxy's job
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}


@pytest.fixture(autouse=True)
def _fast_password_hasher(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


# --- Browsers ------------------------------------------------------------------------------------

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--host-resolver-rules=MAP testserver 127.0.0.1"]


@pytest.fixture(autouse=True, scope="session")
def _plain_http_live_server():
    """Test servers speak plain HTTP, but production mode (DATABASE_URL set, as in CI) turns on the
    HTTPS redirect and Secure cookies. The live server is session-scoped and builds its middleware
    once, so this runs before it starts, on django.conf.settings itself."""
    names = ("SECURE_SSL_REDIRECT", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE")
    saved = {name: getattr(settings, name) for name in names}
    for name in names:
        setattr(settings, name, False)
    yield
    for name, value in saved.items():
        setattr(settings, name, value)


@pytest.fixture
def browser_page(chromium_path, monkeypatch):
    """A page in headless Debian Chromium driven by Playwright (its own browser download does not
    work here)."""
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop in this thread; the test's own ORM reads are still
    # plain synchronous code (the documented setting for driving a browser from Django tests).
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path, args=CHROMIUM_FLAGS)
        page = browser.new_context().new_page()
        page.set_default_timeout(20000)
        yield page
        browser.close()


def browser_login(page, base: str, username: str, password: str = "pw-Secret-123") -> None:
    """Sign in through the real login form."""
    page.goto(f"{base}/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/login/" not in url)


# --- A real ASGI server --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serving_asgi(application):
    """`application` under uvicorn on a free loopback port, in a thread of this process (so it shares
    the test database), with the ASGI lifespan so the app shuts down cleanly. Yields the port."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(application, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on", ws="websockets-sansio"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)
