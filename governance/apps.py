from django.apps import AppConfig


class GovernanceConfig(AppConfig):
    name = "governance"

    def ready(self):
        from governance import receivers, schema  # noqa: F401 - audit of lockouts; the OpenAPI auth scheme
