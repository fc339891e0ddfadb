from django.apps import AppConfig


class SchedulerConfig(AppConfig):
    name = "scheduler"

    def ready(self):
        # Connect the scheduler's receivers (quota_changed -> a scheduling pass).
        from scheduler import signals  # noqa: F401
        from scheduler import access  # noqa: F401 - registers the scheduler's perms (S2)
        from scheduler import telemetry_access  # noqa: F401 - registers the telemetry perms (T)
