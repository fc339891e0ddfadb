"""Sign-in: throttled by django-axes (5 failures lock the username from that address, even for
the right password, with a clear message), password change, and production security settings
that pass `manage.py check --deploy`."""

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from governance.models import AuditEvent, User

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "pw-Secret-123"  # tests.factories.UserFactory's


def _login(client, username, password):
    return client.post("/login/", {"username": username, "password": password})


def test_right_password_signs_in_and_lands_on_the_dashboard(client, member):
    response = _login(client, member.username, PASSWORD)
    assert response.status_code == 302 and response["Location"] == "/"
    assert "Welcome" in client.get("/").content.decode()


def test_a_wrong_password_says_so_without_telling_which_part(client, member):
    response = _login(client, member.username, "nope")
    assert response.status_code == 200
    assert "Please enter a correct username and password" in response.content.decode()


def test_five_failures_lock_the_account_even_with_the_right_password(client, member):
    for _ in range(4):
        assert _login(client, member.username, "wrong").status_code == 200
    fifth = _login(client, member.username, "wrong")
    assert fifth.status_code == 429
    locked = _login(client, member.username, PASSWORD)
    assert locked.status_code == 429
    html = locked.content.decode()
    assert "Too many failed sign-in attempts" in html and member.username in html and "15 minutes" in html
    assert "_auth_user_id" not in client.session
    lockouts = AuditEvent.objects.filter(action="auth.lockout")
    assert lockouts.count() >= 1 and {e.outcome for e in lockouts} == {"denied"} and lockouts[0].target_id == member.username
    # Someone else from the same address is not locked out by it.
    other = User.objects.create_user("bystander", password=PASSWORD)
    assert _login(client, other.username, PASSWORD).status_code == 302


def test_password_change(client, member):
    client.force_login(member)
    assert "Change your password" in client.get("/password/").content.decode()
    bad = client.post("/password/", {"old_password": "wrong", "new_password1": "a-Long-new-pass-42", "new_password2": "a-Long-new-pass-42"})
    assert bad.status_code == 200 and "aria-invalid" in bad.content.decode()
    response = client.post("/password/", {"old_password": PASSWORD, "new_password1": "a-Long-new-pass-42", "new_password2": "a-Long-new-pass-42"})
    assert response.status_code == 302 and response["Location"] == "/password/done/"
    assert "Password changed" in client.get("/password/done/").content.decode()
    member.refresh_from_db()
    assert member.check_password("a-Long-new-pass-42")


def test_check_deploy_is_clean_with_production_settings(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL", "DEBUG", "SECURE_", "SESSION_", "CSRF_"))}
    env.update({"DATABASE_URL": "postgres://x@127.0.0.1/x", "REDIS_URL": "redis://127.0.0.1",
                "SECRET_KEY": secrets.token_urlsafe(60), "ALLOWED_HOSTS": "portal.example.com",
                "PORTAL_LOCAL_DIR": str(tmp_path)})
    result = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout
