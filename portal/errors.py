class DomainError(Exception):
    """A business rule said no. Views show `message` as a form error; the API maps it to a 4xx
    with a JSON body {"error": code, "detail": message, "fields": {...}}."""

    status = 400

    def __init__(self, message: str, *, code: str = "invalid", fields: dict | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.fields = fields or {}
        if status is not None:
            self.status = status


class Conflict(DomainError):
    status = 409


class NotFound(DomainError):
    status = 404
