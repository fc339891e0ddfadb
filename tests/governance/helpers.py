"""What "nothing changed" means for governance: the same rows and the same, intact audit chain."""

from governance.audit import audit_chain_verify
from governance.models import ApiToken, AuditEvent, Membership, QuotaGrant, Team, TeamPolicy, User


def snapshot() -> dict:
    return {
        "users": User.objects.count(),
        "teams": Team.objects.count(),
        "policies": TeamPolicy.objects.count(),
        "memberships": sorted(Membership.objects.values_list("team_id", "user_id", "role")),
        "tokens": sorted(ApiToken.objects.values_list("pk", "name", "revoked_at")),
        "grants": sorted(QuotaGrant.objects.values_list("pk", "count", "flavor", "ends_at")),
        "audit_last": AuditEvent.objects.order_by("-id").values_list("hash", flat=True).first(),
        "audit_successes": AuditEvent.objects.filter(outcome="success").count(),
    }


def assert_unchanged(before: dict) -> None:
    after = snapshot()
    assert after == before
    report = audit_chain_verify()
    assert report.ok, report.problem
