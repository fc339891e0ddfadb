"""Input and output shapes of the governance API: one input and one output serializer per
endpoint. Inputs are strict: an unknown key or a value of the wrong JSON type is a 400, never
silently dropped or coerced."""

from collections.abc import Mapping

from rest_framework import serializers

from governance.models import ApiToken, Role, slug_validator
from governance.services import TOKEN_MAX_DAYS


class StrictInputSerializer(serializers.Serializer):
    """Base for every API input: rejects keys the endpoint does not know (a typo such as
    `rol` must not be ignored while the request "succeeds"). Other apps' inputs use it too."""

    def to_internal_value(self, data):
        if isinstance(data, Mapping):
            unknown = sorted(set(data) - {name for name, field in self.fields.items() if not field.read_only})
            if unknown:
                raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        return super().to_internal_value(data)


class StrictCharField(serializers.CharField):
    """A string, and only a string: DRF's CharField would turn 123 into "123"."""

    default_error_messages = {"not_a_string": "Must be a string."}

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("not_a_string")
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    """An integer, not "3" nor 3.0 nor true."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


def paginated(serializer_class):
    """The schema of a limit/offset page of `serializer_class` (what LimitOffsetPagination returns)."""
    return type(f"Paginated{serializer_class.__name__.removesuffix('Serializer')}", (serializers.Serializer,), {
        "count": serializers.IntegerField(),
        "next": serializers.URLField(allow_null=True),
        "previous": serializers.URLField(allow_null=True),
        "results": serializer_class(many=True),
    })


# --- me ---

class MeTeamOutput(serializers.Serializer):
    slug = serializers.CharField()
    name = serializers.CharField()
    role = serializers.ChoiceField(choices=Role.choices)


class MeOutput(serializers.Serializer):
    id = serializers.IntegerField()
    username = serializers.CharField()
    email = serializers.EmailField()
    full_name = serializers.CharField()
    platform_roles = serializers.ListField(child=serializers.CharField())
    is_platform_admin = serializers.BooleanField()
    is_approver = serializers.BooleanField()
    is_auditor = serializers.BooleanField()
    teams = MeTeamOutput(many=True)


# --- teams ---

class TeamOutput(serializers.Serializer):
    slug = serializers.CharField()
    name = serializers.CharField()
    description = serializers.CharField()
    created_at = serializers.DateTimeField()
    member_count = serializers.IntegerField(required=False)
    role = serializers.ChoiceField(choices=Role.choices, allow_null=True, required=False, help_text="Your role in the team; null for platform staff outside it.")


class TeamCreateInput(StrictInputSerializer):
    name = StrictCharField(max_length=100)
    slug = StrictCharField(max_length=50, validators=[slug_validator])
    description = StrictCharField(max_length=2000, required=False, allow_blank=True, default="")
    owner = StrictCharField(max_length=150, required=False, allow_blank=True, default="", help_text="Username of the first owner.")


class TeamUpdateInput(StrictInputSerializer):
    name = StrictCharField(max_length=100, required=False)
    description = StrictCharField(max_length=2000, required=False, allow_blank=True)


# --- memberships ---

class MembershipOutput(serializers.Serializer):
    id = serializers.IntegerField()
    username = serializers.CharField(source="user.username")
    full_name = serializers.CharField(source="user.get_full_name")
    role = serializers.ChoiceField(choices=Role.choices)
    created_at = serializers.DateTimeField()


class MembershipCreateInput(StrictInputSerializer):
    username = StrictCharField(max_length=150)
    role = serializers.ChoiceField(choices=Role.choices, default=Role.MEMBER)


class MembershipUpdateInput(StrictInputSerializer):
    role = serializers.ChoiceField(choices=Role.choices)


# --- tokens ---

class TokenOutput(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    key_id = serializers.CharField(help_text="Public part of the token, shown in the audit trail.")
    scopes = serializers.ListField(child=serializers.ChoiceField(choices=ApiToken.SCOPES))
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField(allow_null=True)
    last_used_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)
    state = serializers.SerializerMethodField()

    def get_state(self, token) -> str:
        if token.revoked_at is not None:
            return "revoked"
        return "active" if token.is_active else "expired"


class TokenCreatedOutput(TokenOutput):
    token = serializers.CharField(help_text="The secret. Shown in this response only; store it now.")


class TokenCreateInput(StrictInputSerializer):
    name = StrictCharField(max_length=100)
    scopes = serializers.ListField(child=serializers.ChoiceField(choices=ApiToken.SCOPES), min_length=1, max_length=3)
    expires_at = serializers.DateTimeField(required=False, help_text=f"At most {TOKEN_MAX_DAYS} days ahead.")
    expires_in_days = StrictIntegerField(required=False, min_value=1, max_value=TOKEN_MAX_DAYS)

    def validate(self, attrs):
        if ("expires_at" in attrs) == ("expires_in_days" in attrs):
            raise serializers.ValidationError({"expires_at": ["Give exactly one of expires_at or expires_in_days."]})
        return attrs
