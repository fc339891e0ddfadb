import uuid

from portal import context


def client_ip(request) -> str | None:
    # Only REMOTE_ADDR: X-Forwarded-For is trivially forged unless a trusted proxy rewrites it,
    # and the deployment's proxy is expected to set REMOTE_ADDR (uvicorn --proxy-headers).
    return request.META.get("REMOTE_ADDR") or None


class RequestContextMiddleware:
    """Gives every request an id (kept from X-Request-ID when sane) and records the client IP
    for the audit trail."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        incoming = request.headers.get("X-Request-ID", "")
        request_id = incoming if 0 < len(incoming) <= 64 and incoming.replace("-", "").isalnum() else uuid.uuid4().hex
        request.request_id = request_id
        token = context.set_meta(context.RequestMeta(request_id=request_id, source_ip=client_ip(request)))
        try:
            response = self.get_response(request)
        finally:
            context.reset(token)
        response["X-Request-ID"] = request_id
        return response
