from rest_framework.permissions import SAFE_METHODS, BasePermission

from governance.models import ApiToken


class TokenScopePermission(BasePermission):
    """Authenticated, and when the caller uses a token, the token's scopes allow the method:
    `read` for safe methods, `write` for the rest. Object-level rules come from governance.access
    in the views' services and selectors, not here."""

    message = "Authentication required."

    def has_permission(self, request, view):
        if not (request.user and request.user.is_authenticated):
            return False
        token = request.auth
        if isinstance(token, ApiToken):
            needed = getattr(view, "required_scope", None) or ("read" if request.method in SAFE_METHODS else "write")
            if needed not in token.scopes:
                self.message = f"This token lacks the '{needed}' scope."
                return False
        return True
