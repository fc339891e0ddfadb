"""Django admin for platform admins' housekeeping. Accounts are managed here (there is no sign-up);
everything with business rules (teams, memberships, tokens, grants) is read-only here and changed
through the portal's pages or API, whose services audit each change. Account changes made here
are audited too, in the admin's own transaction."""

from django.contrib import admin
from django.contrib.auth.admin import UserAdmin

from governance.audit import audit_record, diff
from governance.models import ApiToken, AuditEvent, Membership, QuotaGrant, Team, TeamPolicy, User

AUDITED_USER_FIELDS = ("username", "email", "first_name", "last_name", "is_active", "is_staff", "is_superuser",
                       "is_platform_admin", "is_approver", "is_auditor")


@admin.register(User)
class PortalUserAdmin(UserAdmin):
    list_display = ("username", "email", "is_active", "is_platform_admin", "is_approver", "is_auditor", "last_login")
    list_filter = ("is_active", "is_platform_admin", "is_approver", "is_auditor")
    fieldsets = UserAdmin.fieldsets + (("Platform roles", {"fields": ("is_platform_admin", "is_approver", "is_auditor")}),)

    def save_model(self, request, obj, form, change):
        before = {}
        if change:
            old = User.objects.filter(pk=obj.pk).values(*AUDITED_USER_FIELDS).first() or {}
            before = dict(old)
        password_changed = "password" in form.changed_data or not change
        super().save_model(request, obj, form, change)
        changes = diff(before, {f: getattr(obj, f) for f in AUDITED_USER_FIELDS})
        if password_changed and change:
            changes["password"] = ["(set)", "(changed)"]
        if changes:
            audit_record(action="user.update" if change else "user.create", actor=request.user, target=obj, changes=changes)

    def has_delete_permission(self, request, obj=None):
        return False  # deactivate instead: the audit trail keeps pointing at the person


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Team)
class TeamAdmin(ReadOnlyAdmin):
    list_display = ("name", "slug", "created_at")
    search_fields = ("name", "slug")


@admin.register(Membership)
class MembershipAdmin(ReadOnlyAdmin):
    list_display = ("team", "user", "role", "created_at")
    list_filter = ("role", "team")
    list_select_related = ("team", "user")


@admin.register(TeamPolicy)
class TeamPolicyAdmin(ReadOnlyAdmin):
    list_display = ("team", "max_gpus_per_workspace", "borrow_limit", "lending_limit", "fair_share_weight")
    list_select_related = ("team",)


@admin.register(QuotaGrant)
class QuotaGrantAdmin(ReadOnlyAdmin):
    list_display = ("team", "flavor", "count", "starts_at", "ends_at")
    list_select_related = ("team",)


@admin.register(ApiToken)
class ApiTokenAdmin(ReadOnlyAdmin):
    list_display = ("name", "user", "key_id", "created_at", "expires_at", "revoked_at", "last_used_at")
    list_select_related = ("user",)
    exclude = ("secret_hash",)


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ("id", "created_at", "actor_label", "action", "target_type", "target_id", "outcome")
    list_filter = ("outcome",)
    search_fields = ("action", "actor_label", "target_id")
