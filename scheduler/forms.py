"""Input shapes for the Fleet page's admin actions; the services in scheduler.inventory and
scheduler.services decide."""

import datetime

from django import forms
from django.utils import timezone

from governance.models import Team
from scheduler.inventory import DRAIN_REASON_MAX


class NodeDrainForm(forms.Form):
    reason = forms.CharField(max_length=DRAIN_REASON_MAX, required=False,
                             widget=forms.TextInput(attrs={"placeholder": "reason (e.g. maintenance)"}))


class NodeConfirmGoneForm(forms.Form):
    note = forms.CharField(max_length=200, required=False)


def _local_input(value: datetime.datetime) -> str:
    return timezone.localtime(value).strftime("%Y-%m-%dT%H:%M")


class ReservationForm(forms.Form):
    """N GPUs (or MIG slices) of a flavor for a team during a window. Flavor choices come from the
    inventory: `H100`, or `mig:1g.18gb` for a MIG profile."""

    team = forms.ModelChoiceField(queryset=Team.objects.order_by("name"), to_field_name="slug")
    flavor = forms.ChoiceField(choices=())
    count = forms.IntegerField(min_value=1, max_value=4096, initial=1)
    starts_at = forms.DateTimeField(widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"))
    ends_at = forms.DateTimeField(widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"))
    note = forms.CharField(max_length=200, required=False)

    def __init__(self, *args, models: list[str], profiles: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["flavor"].choices = [(m, m) for m in models] + [(f"mig:{p}", f"MIG {p}") for p in profiles]
        if not self.is_bound:
            start = timezone.now().replace(minute=0, second=0, microsecond=0) + datetime.timedelta(hours=1)
            self.initial.setdefault("starts_at", _local_input(start))
            self.initial.setdefault("ends_at", _local_input(start + datetime.timedelta(hours=8)))

    def flavor_and_mig(self) -> tuple[str, bool]:
        value = self.cleaned_data["flavor"]
        return (value[4:], True) if value.startswith("mig:") else (value, False)
