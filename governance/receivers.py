"""Sign-in events the audit trail records. django-axes decides the lockout; this only writes it
down, so a locked account is visible to auditors beside every other refusal."""

from axes.signals import user_locked_out
from django.dispatch import receiver

from governance.audit import audit_denied


@receiver(user_locked_out, dispatch_uid="governance.audit_lockout")
def audit_lockout(sender, request=None, username=None, ip_address=None, **kwargs):
    audit_denied(action="auth.lockout", actor=None, target_type="governance.user", target_id=(username or "")[:64],
                 reason=f"too many failed sign-ins for '{username}'")
