from django import forms

from governance.access import can, teams_visible_to
from governance.selectors import team_granted_flavors
from workspaces import selectors
from workspaces.models import Image, Workspace


class WorkspaceCreateForm(forms.Form):
    team = forms.ModelChoiceField(queryset=None, to_field_name="slug", empty_label=None)
    image = forms.ModelChoiceField(queryset=Image.objects.filter(active=True), to_field_name="name", empty_label=None)
    flavor = forms.ChoiceField(label="GPU", help_text="A GPU model (whole GPUs) or a MIG slice profile.")
    gpu_count = forms.IntegerField(label="How many", min_value=1, max_value=64, initial=1)
    duration_hours = forms.FloatField(label="Planned duration (hours)", min_value=0.05, max_value=24 * 365, initial=8)
    sharing = forms.ChoiceField(choices=Workspace.Sharing.choices, initial=Workspace.Sharing.PRIVATE,
                                help_text="Team: your team's members may open this lab too.")
    name = forms.CharField(max_length=80, required=False)

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        teams = [t for t in teams_visible_to(user).select_related("policy").order_by("name") if can(user, "team.use_gpus", t)]
        self.fields["team"].queryset = teams_visible_to(user).filter(pk__in=[t.pk for t in teams]).order_by("name")
        self.fields["flavor"].choices = selectors.flavor_choices()
        slug = self.data.get("team") if self.is_bound else None
        team = next((t for t in teams if t.slug == slug), teams[0] if teams else None)
        self.selected_team = team
        self.fields["image"].queryset = selectors.image_choices_for(team=team)
        if not self.is_bound and team is not None:
            # Start from what the team is entitled to, not from the first model in the inventory.
            offered = {value for value, _label in self.fields["flavor"].choices}
            for flavor in team_granted_flavors(team=team):
                value = flavor if flavor in offered else f"mig:{flavor}"
                if value in offered:
                    self.initial["flavor"] = value
                    break

    def flavor_parts(self) -> tuple[str, bool]:
        value = self.cleaned_data["flavor"]
        return (value[4:], True) if value.startswith("mig:") else (value, False)


class WorkspaceExtendForm(forms.Form):
    hours = forms.FloatField(min_value=0.1, max_value=24 * 30, initial=2)
