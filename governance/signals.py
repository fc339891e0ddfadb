"""Domain signals governance sends. Higher apps connect to them (the scheduler runs a pass when
quota changes); governance never imports them, so the dependency points one way."""

from django.dispatch import Signal

# Sent on commit after a quota grant was created, changed or ended. Arguments: team_id, grant_id.
quota_changed = Signal()
