from django.apps import AppConfig


class PortalConfig(AppConfig):
    name = "portal"

    def ready(self):
        from django.conf import settings

        if settings.PORTAL_INPROCESS_BEAT:
            from portal import inprocess

            inprocess.start_beat()
