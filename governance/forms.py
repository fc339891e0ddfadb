"""Forms only shape input; the services decide. A service's DomainError goes back onto the form
with `add_domain_error`, so the page shows it in place."""

import datetime

from django import forms
from django.utils import timezone

from governance.models import ApiToken, Role, Team, slug_validator
from governance.services import TOKEN_MAX_DAYS
from portal.errors import DomainError


def add_domain_error(form: forms.Form, error: DomainError) -> None:
    placed = False
    for field, messages in (error.fields or {}).items():
        if field in form.fields:
            for message in messages if isinstance(messages, list) else [messages]:
                form.add_error(field, message)
            placed = True
    if not placed:
        form.add_error(None, error.message)


class TeamCreateForm(forms.Form):
    name = forms.CharField(max_length=100)
    slug = forms.CharField(max_length=50, validators=[slug_validator], help_text="Lowercase letters, digits, hyphens; permanent.")
    description = forms.CharField(max_length=2000, required=False, widget=forms.Textarea(attrs={"rows": 2}))
    owner = forms.CharField(max_length=150, required=False, help_text="Username of the first owner (optional).")


class TeamUpdateForm(forms.Form):
    name = forms.CharField(max_length=100)
    description = forms.CharField(max_length=2000, required=False, widget=forms.Textarea(attrs={"rows": 3}))


class MembershipAddForm(forms.Form):
    username = forms.CharField(max_length=150)
    role = forms.ChoiceField(choices=Role.choices, initial=Role.MEMBER)


class MembershipRoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)


EXPIRY_CHOICES = [("7", "7 days"), ("30", "30 days"), ("90", "90 days"), ("365", "1 year")]


class TokenCreateForm(forms.Form):
    name = forms.CharField(max_length=100)
    scopes = forms.MultipleChoiceField(choices=ApiToken.SCOPES, widget=forms.CheckboxSelectMultiple, initial=["read"])
    expires_in_days = forms.TypedChoiceField(choices=EXPIRY_CHOICES, coerce=int, initial="30", label="Expires in")

    def __init__(self, *args, may_decide_quota: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        if not may_decide_quota:  # offered only to those who may hold it (the service checks again)
            self.fields["scopes"].choices = [c for c in ApiToken.SCOPES if c[0] != "quota"]

    def expires_at(self) -> datetime.datetime:
        return timezone.now() + datetime.timedelta(days=min(self.cleaned_data["expires_in_days"], TOKEN_MAX_DAYS))


class QuotaGrantForm(forms.Form):
    team = forms.ModelChoiceField(queryset=Team.objects.order_by("name"), to_field_name="slug")
    flavor = forms.CharField(max_length=40, help_text='A GPU model ("H100") or a MIG profile ("1g.18gb").')
    count = forms.IntegerField(min_value=1, max_value=10000)
    starts_at = forms.DateTimeField(required=False, widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"), help_text="Empty: now.")
    ends_at = forms.DateTimeField(required=False, widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"), help_text="Empty: open-ended.")


class AuditFilterForm(forms.Form):
    team = forms.CharField(required=False, max_length=50)
    actor = forms.CharField(required=False, max_length=150)
    action = forms.CharField(required=False, max_length=80)
    outcome = forms.ChoiceField(required=False, choices=[("", "any outcome"), ("success", "success"), ("denied", "denied"), ("failed", "failed")])
