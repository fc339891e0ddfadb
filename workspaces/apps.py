from django.apps import AppConfig


class WorkspacesConfig(AppConfig):
    name = "workspaces"

    def ready(self):
        from workspaces import access, receivers  # noqa: F401 — registers perms and signal receivers
