from django.db.models import F
from django.utils import timezone
from rest_framework import authentication, exceptions

from governance.models import ApiToken
from portal import context


def token_lookup(raw: str) -> ApiToken | None:
    """The active token for a presented secret, or None. Compares hashes only; the lookup is by
    the public key id so no hash is ever compared by the database."""
    import hmac

    if not raw.startswith(ApiToken.PREFIX):
        return None
    try:
        key_id, _secret = raw[len(ApiToken.PREFIX):].split("_", 1)
    except ValueError:
        return None
    token = ApiToken.objects.select_related("user").filter(key_id=key_id).first()
    if token is None or not hmac.compare_digest(token.secret_hash, ApiToken.hash_secret(raw)):
        return None
    return token


class BearerTokenAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer gpt_<key id>_<secret>`. Revoked or expired tokens fail at once (401)."""

    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        parts = header.split()
        if parts[0] != self.keyword:
            return None
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed("Malformed Authorization header: expected 'Bearer <token>'.")
        token = token_lookup(parts[1])
        if token is None:
            raise exceptions.AuthenticationFailed("Invalid token.")
        if token.revoked_at is not None:
            raise exceptions.AuthenticationFailed("Token has been revoked.")
        if token.expires_at is not None and token.expires_at <= timezone.now():
            raise exceptions.AuthenticationFailed("Token has expired.")
        if not token.user.is_active:
            raise exceptions.AuthenticationFailed("User is inactive.")
        now = timezone.now()
        if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        context.with_token(token.pk)
        return token.user, token

    def authenticate_header(self, request):
        return self.keyword
