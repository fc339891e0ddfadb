"""Every write governance does. Each service is atomic and writes exactly one audit event in the
same transaction, with the before/after of what changed."""

import datetime
from functools import partial

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from governance import access
from governance.audit import audit_record, diff
from governance.models import ApiToken, Membership, QuotaGrant, Role, Team, TeamPolicy, User
from governance.signals import quota_changed
from portal.errors import Conflict, DomainError

TOKEN_MAX_DAYS = 365
TOKEN_SCOPES = {code for code, _label in ApiToken.SCOPES}


def _clean(instance, *, exclude=None) -> None:
    """Model validation as a DomainError carrying the field messages."""
    try:
        instance.full_clean(exclude=exclude, validate_unique=False, validate_constraints=False)
    except ValidationError as exc:
        fields = exc.message_dict
        first = next(iter(fields.values()))[0]
        raise DomainError(first, fields=fields) from exc


def _check_description(team: Team) -> None:
    # TextField's max_length is only a form hint; the model does not enforce it.
    if len(team.description) > 2000:
        raise DomainError("The description is too long.", fields={"description": ["At most 2000 characters."]})


def _team_fields(team: Team) -> dict:
    return {"name": team.name, "slug": team.slug, "description": team.description}


def _slug_taken(slug: str) -> Conflict:
    return Conflict(f"A team with slug '{slug}' already exists.", code="duplicate", fields={"slug": ["This slug is taken."]})


def team_create(*, actor: User, name: str, slug: str, description: str = "", owner_username: str = "") -> Team:
    """A new team with its default policy and, when a username is given, its first owner."""
    team = Team(name=(name or "").strip(), slug=(slug or "").strip(), description=(description or "").strip())
    _clean(team, exclude=["created_at"])
    _check_description(team)
    owner = None
    if owner_username:
        owner = User.objects.filter(username=owner_username.strip(), is_active=True).first()
        if owner is None:
            raise DomainError(f"No active user named '{owner_username}'.", code="unknown_user",
                              fields={"owner": ["No active user with this username."]})
    with transaction.atomic():
        if Team.objects.filter(slug=team.slug).exists():
            raise _slug_taken(team.slug)
        try:
            with transaction.atomic():
                team.save()
        except IntegrityError as exc:  # a concurrent create won the race for the slug
            raise _slug_taken(team.slug) from exc
        TeamPolicy.objects.create(team=team)
        changes = diff({}, _team_fields(team))
        if owner is not None:
            Membership.objects.create(team=team, user=owner, role=Role.OWNER)
            changes["owner"] = [None, owner.username]
        audit_record(action="team.create", actor=actor, target=team, team=team, changes=changes)
    return team


def team_update(*, actor: User, team: Team, name: str | None = None, description: str | None = None) -> Team:
    """Rename or describe a team; the slug is its permanent address and does not change."""
    with transaction.atomic():
        team = Team.objects.select_for_update().get(pk=team.pk)
        before = _team_fields(team)
        if name is not None:
            team.name = name.strip()
        if description is not None:
            team.description = description.strip()
        _clean(team, exclude=["created_at", "slug"])
        _check_description(team)
        changes = diff(before, _team_fields(team))
        if not changes:
            return team
        team.save(update_fields=["name", "description"])
        audit_record(action="team.update", actor=actor, target=team, team=team, changes=changes)
    return team


def _check_role(role: str) -> None:
    if role not in Role.values:
        raise DomainError(f"Unknown role '{role}'.", fields={"role": [f"Choose one of: {', '.join(Role.values)}."]})


class _OwnerPowersNeeded(Exception):
    """Raised inside a transaction, turned into an audited 403 after it rolled back (an audit
    event written inside the rolled-back transaction would be lost)."""

    def __init__(self, team: Team):
        self.team = team


def _require_owner_powers(actor: User, team: Team, *roles: str) -> None:
    """Granting, changing or removing the owner role takes an owner (or a platform admin): a team
    admin cannot make themselves owner or remove the people above them."""
    if Role.OWNER in roles and not access.can(actor, "team.change", team):
        raise _OwnerPowersNeeded(team)


def membership_add(*, actor: User, team: Team, username: str, role: str = Role.MEMBER) -> Membership:
    """Add an existing user to the team with a role."""
    _check_role(role)
    user = User.objects.filter(username=(username or "").strip(), is_active=True).first()
    if user is None:
        raise DomainError(f"No active user named '{username}'.", code="unknown_user", fields={"username": ["No active user with this username."]})
    if role == Role.OWNER:
        access.require(actor, "team.change", team)
    already = Conflict(f"{user.username} is already in {team.name}.", code="duplicate",
                       fields={"username": ["Already a member of this team."]})
    with transaction.atomic():
        if Membership.objects.filter(team=team, user=user).exists():
            raise already
        try:
            with transaction.atomic():
                membership = Membership.objects.create(team=team, user=user, role=role)
        except IntegrityError as exc:  # a concurrent add won the race
            raise already from exc
        audit_record(action="membership.add", actor=actor, target=membership, team=team,
                     changes={"user": [None, user.username], "role": [None, role]})
    access.forget_roles(actor)
    return membership


def _owner_count(team_id: int) -> int:
    # Lock every owner row so two concurrent demotions cannot both see "another owner remains".
    return len(Membership.objects.select_for_update().filter(team_id=team_id, role=Role.OWNER).values_list("pk", flat=True))


def membership_change_role(*, actor: User, membership: Membership, role: str) -> Membership:
    """Change a member's role; the team's last owner cannot be demoted."""
    _check_role(role)
    try:
        return _membership_change_role(actor=actor, membership=membership, role=role)
    except _OwnerPowersNeeded as needed:
        access.require(actor, "team.change", needed.team)  # audits the refusal and raises
        return _membership_change_role(actor=actor, membership=membership, role=role)  # allowed meanwhile


def _membership_change_role(*, actor: User, membership: Membership, role: str) -> Membership:
    with transaction.atomic():
        membership = Membership.objects.select_for_update().select_related("team", "user").get(pk=membership.pk)
        if membership.role == role:
            return membership
        _require_owner_powers(actor, membership.team, role, membership.role)
        if membership.role == Role.OWNER and _owner_count(membership.team_id) <= 1:
            raise DomainError("A team needs at least one owner: make someone else owner first.", code="last_owner",
                              fields={"role": ["This is the team's last owner."]})
        before = membership.role
        membership.role = role
        membership.save(update_fields=["role"])
        audit_record(action="membership.change_role", actor=actor, target=membership, team=membership.team,
                     changes={"user": [membership.user.username, membership.user.username], "role": [before, role]})
    access.forget_roles(actor)
    return membership


def membership_remove(*, actor: User, membership: Membership) -> None:
    """Remove a member; the team's last owner cannot be removed."""
    try:
        _membership_remove(actor=actor, membership=membership)
    except _OwnerPowersNeeded as needed:
        access.require(actor, "team.change", needed.team)  # audits the refusal and raises
        _membership_remove(actor=actor, membership=membership)  # allowed meanwhile


def _membership_remove(*, actor: User, membership: Membership) -> None:
    with transaction.atomic():
        membership = Membership.objects.select_for_update().select_related("team", "user").get(pk=membership.pk)
        _require_owner_powers(actor, membership.team, membership.role)
        if membership.role == Role.OWNER and _owner_count(membership.team_id) <= 1:
            raise DomainError("A team needs at least one owner: it cannot lose its last one.", code="last_owner")
        target_id = membership.pk
        membership.delete()
        audit_record(action="membership.remove", actor=actor, target_type="governance.membership", target_id=target_id,
                     team=membership.team, changes={"user": [membership.user.username, None], "role": [membership.role, None]})
    access.forget_roles(actor)


def api_token_create(*, user: User, name: str, scopes: list[str], expires_at: datetime.datetime,
                     via_token: ApiToken | None = None) -> tuple[ApiToken, str]:
    """A new token for `user`; returns (row, secret). The secret exists only in this return value.
    A token minting another (`via_token`) cannot widen its scopes or outlive itself, so revoking a
    leaked token is never undone by a child it created."""
    name = (name or "").strip()
    fields = {}
    if not name:
        fields["name"] = ["Give the token a name."]
    elif len(name) > 100:
        fields["name"] = ["At most 100 characters."]
    scopes = sorted(set(scopes or []))
    if not scopes:
        fields["scopes"] = ["Choose at least one scope."]
    elif not set(scopes) <= TOKEN_SCOPES:
        fields["scopes"] = [f"Unknown scope; choose from {', '.join(sorted(TOKEN_SCOPES))}."]
    elif "quota" in scopes and not access.can(user, "quota.decide"):
        fields["scopes"] = ["Only approvers and platform admins may hold the quota scope."]
    now = timezone.now()
    if expires_at is None:
        fields["expires_at"] = ["An expiry is required."]
    elif expires_at <= now:
        fields["expires_at"] = ["The expiry must be in the future."]
    elif expires_at > now + datetime.timedelta(days=TOKEN_MAX_DAYS, minutes=5):
        fields["expires_at"] = [f"At most {TOKEN_MAX_DAYS} days from now."]
    if via_token is not None and not fields:
        if not set(scopes) <= set(via_token.scopes):
            fields["scopes"] = ["A token can only create tokens with a subset of its own scopes."]
        elif via_token.expires_at is not None and expires_at > via_token.expires_at:
            fields["expires_at"] = ["A token can only create tokens that expire before it does."]
    if fields:
        raise DomainError(next(iter(fields.values()))[0], fields=fields)
    key_id, secret = ApiToken.new_secret()
    with transaction.atomic():
        token = ApiToken.objects.create(user=user, name=name, key_id=key_id, secret_hash=ApiToken.hash_secret(secret),
                                        scopes=scopes, expires_at=expires_at)
        audit_record(action="token.create", actor=user, target=token,
                     changes={"name": [None, name], "key_id": [None, key_id], "scopes": [None, scopes],
                              "expires_at": [None, expires_at.isoformat()]})
    return token, secret


def api_token_revoke(*, actor: User, token: ApiToken) -> ApiToken:
    """Revoke an active token; it is refused from the next request on."""
    with transaction.atomic():
        token = ApiToken.objects.select_for_update().get(pk=token.pk)
        if token.revoked_at is not None:
            raise Conflict("This token is already revoked.", code="already_revoked")
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        audit_record(action="token.revoke", actor=actor, target=token,
                     changes={"revoked_at": [None, token.revoked_at.isoformat()]})
    return token


def _grant_fields(grant: QuotaGrant) -> dict:
    return {"team": grant.team.slug, "flavor": grant.flavor, "count": grant.count,
            "starts_at": grant.starts_at.isoformat() if grant.starts_at else None,
            "ends_at": grant.ends_at.isoformat() if grant.ends_at else None}


def _check_grant(grant: QuotaGrant) -> None:
    grant.flavor = (grant.flavor or "").strip()
    _clean(grant, exclude=["created_at", "created_by", "team"])
    if grant.count < 1:
        raise DomainError("Grant at least one GPU.", fields={"count": ["At least 1."]})
    if grant.ends_at is not None and grant.starts_at is not None and grant.ends_at <= grant.starts_at:
        raise DomainError("The end must be after the start.", fields={"ends_at": ["Must be after the start."]})


def _announce_quota_change(grant: QuotaGrant) -> None:
    transaction.on_commit(partial(quota_changed.send, sender=QuotaGrant, team_id=grant.team_id, grant_id=grant.pk))


def quota_grant_create(*, actor: User, team: Team, flavor: str, count: int,
                       starts_at: datetime.datetime | None = None, ends_at: datetime.datetime | None = None) -> QuotaGrant:
    """Entitle a team to `count` GPUs of a flavor for a window."""
    grant = QuotaGrant(team=team, flavor=flavor, count=count, starts_at=starts_at or timezone.now(), ends_at=ends_at, created_by=actor)
    _check_grant(grant)
    with transaction.atomic():
        grant.save()
        audit_record(action="quota_grant.create", actor=actor, target=grant, team=team, changes=diff({}, _grant_fields(grant)))
        _announce_quota_change(grant)
    return grant


_UNSET = object()


def quota_grant_update(*, actor: User, grant: QuotaGrant, count=_UNSET, flavor=_UNSET, starts_at=_UNSET, ends_at=_UNSET) -> QuotaGrant:
    """Change a grant's size, flavor or window (ending it = setting ends_at to now)."""
    with transaction.atomic():
        grant = QuotaGrant.objects.select_for_update().select_related("team").get(pk=grant.pk)
        before = _grant_fields(grant)
        for field, value in (("count", count), ("flavor", flavor), ("starts_at", starts_at), ("ends_at", ends_at)):
            if value is not _UNSET:
                setattr(grant, field, value)
        _check_grant(grant)
        changes = diff(before, _grant_fields(grant))
        if not changes:
            return grant
        grant.save(update_fields=["count", "flavor", "starts_at", "ends_at"])
        audit_record(action="quota_grant.update", actor=actor, target=grant, team=grant.team, changes=changes)
        _announce_quota_change(grant)
    return grant


def quota_grant_end(*, actor: User, grant: QuotaGrant) -> QuotaGrant:
    """End a grant now; a grant that already ended stays as it is."""
    if grant.ends_at is not None and grant.ends_at <= timezone.now():
        raise Conflict("This grant has already ended.", code="already_ended")
    # An upcoming grant ends right at its start: a zero-length window, kept for the record.
    return quota_grant_update(actor=actor, grant=grant, ends_at=max(timezone.now(), grant.starts_at + datetime.timedelta(microseconds=1)))
