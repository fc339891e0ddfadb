"""Who is acting and from where, for the audit trail. Set by the request middleware and the API
token authentication; read by governance.services.audit_record. Tasks run with the defaults
(actor "system")."""

import contextvars
from dataclasses import dataclass


@dataclass(frozen=True)
class RequestMeta:
    request_id: str = ""
    source_ip: str | None = None
    token_id: int | None = None


_meta: contextvars.ContextVar[RequestMeta] = contextvars.ContextVar("portal_request_meta", default=RequestMeta())


def current() -> RequestMeta:
    return _meta.get()


def set_meta(meta: RequestMeta) -> contextvars.Token:
    return _meta.set(meta)


def reset(token: contextvars.Token) -> None:
    _meta.reset(token)


def with_token(token_id: int) -> None:
    """The API authenticated a bearer token: later audit events in this request name it."""
    meta = _meta.get()
    _meta.set(RequestMeta(request_id=meta.request_id, source_ip=meta.source_ip, token_id=token_id))
