import factory
from django.utils import timezone

from governance.models import ApiToken, Membership, QuotaGrant, Role, Team, TeamPolicy, User


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.com")
    password = factory.PostGenerationMethodCall("set_password", "pw-Secret-123")

    @factory.post_generation
    def _save(obj, create, extracted, **kwargs):
        if create:
            obj.save()


class TeamFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Team
        django_get_or_create = ("slug",)
        skip_postgeneration_save = True

    name = factory.Sequence(lambda n: f"Team {n}")
    slug = factory.Sequence(lambda n: f"team-{n}")

    @factory.post_generation
    def policy(obj, create, extracted, **kwargs):
        if create:
            TeamPolicy.objects.get_or_create(team=obj)


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    team = factory.SubFactory(TeamFactory)
    user = factory.SubFactory(UserFactory)
    role = Role.MEMBER


class QuotaGrantFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = QuotaGrant

    team = factory.SubFactory(TeamFactory)
    flavor = "H100"
    count = 4
    starts_at = factory.LazyFunction(lambda: timezone.now() - timezone.timedelta(days=1))


def make_token(user, *, scopes=("read", "write"), name="test", expires_at=None) -> tuple[ApiToken, str]:
    """A token row and its secret, as the profile page would hand it out once."""
    key_id, secret = ApiToken.new_secret()
    token = ApiToken.objects.create(user=user, name=name, key_id=key_id, secret_hash=ApiToken.hash_secret(secret),
                                    scopes=list(scopes), expires_at=expires_at)
    return token, secret
