"""One place where errors become HTTP: every API error is JSON {"error", "detail", "fields"?}."""

from django.core.exceptions import PermissionDenied, ValidationError as DjangoValidationError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from portal.errors import DomainError


def exception_handler(exc, context):
    if isinstance(exc, DomainError):
        body = {"error": exc.code, "detail": exc.message}
        if exc.fields:
            body["fields"] = exc.fields
        return Response(body, status=exc.status)
    if isinstance(exc, DjangoValidationError):
        fields = exc.message_dict if hasattr(exc, "error_dict") else {}
        return Response({"error": "invalid", "detail": "; ".join(exc.messages), "fields": fields}, status=400)
    already_audited = getattr(exc, "audited", False)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound(str(exc) or "Not found.")
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or "Permission denied.")
    if isinstance(exc, exceptions.PermissionDenied) and not already_audited:
        request = context.get("request")
        if request is not None and getattr(request, "user", None) is not None and request.user.is_authenticated:
            _audit_api_denial(request, str(exc.detail))
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    data = response.data
    if isinstance(exc, exceptions.ValidationError):
        detail = data if isinstance(data, dict) else {"non_field_errors": data}
        response.data = {"error": "invalid", "detail": "The request has invalid fields.", "fields": detail}
    else:
        code = getattr(exc, "default_code", "error")
        response.data = {"error": code, "detail": data.get("detail", data) if isinstance(data, dict) else data}
    if response.status_code == status.HTTP_401_UNAUTHORIZED and "WWW-Authenticate" not in response:
        response["WWW-Authenticate"] = "Bearer"
    return response


def _audit_api_denial(request, reason: str) -> None:
    # Denials from governance.access.require are audited there (exc.audited); this records the
    # rest: token scope refusals and DRF permission classes.
    from governance.audit import audit_denied

    audit_denied(action=f"api:{request.method} {request.path}", actor=request.user, reason=reason)
