"""Demo data for the embedded default: five users in two teams, quota, images and the simulated
fleet. Idempotent: running it again changes nothing that is already there."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone

from governance.audit import audit_record
from governance.models import Membership, QuotaGrant, Role, Team, TeamPolicy, User

DEMO_PASSWORD = "demo-pass-2026"

USERS = [
    # username, full name, platform flags
    ("alice", "Alice Owner", {}),
    ("bob", "Bob Member", {}),
    ("carol", "Carol Approver", {"is_approver": True}),
    ("dave", "Dave Auditor", {"is_auditor": True}),
    ("admin", "Ada Admin", {"is_platform_admin": True, "is_staff": True, "is_superuser": True}),
]
TEAMS = [
    ("vision", "Vision Research", "Image and video models.", [("alice", Role.OWNER), ("bob", Role.MEMBER)]),
    ("nlp", "Language Models", "LLM fine-tuning and evaluation.", [("alice", Role.ADMIN), ("bob", Role.VIEWER)]),
]
GRANTS = [("vision", "H100", 8), ("vision", "1g.18gb", 2), ("nlp", "H200", 4), ("nlp", "A100", 2)]
IMAGES = [
    ("jupyter-base", "portal-lab:ci", "JupyterLab on Debian with Python 3"),
    ("pytorch", "portal-lab:ci", "JupyterLab for PyTorch work (demo: same base image)"),
]


class Command(BaseCommand):
    help = "Create the demo users, teams, quota, images and simulated fleet (embedded mode only)."

    def add_arguments(self, parser):
        parser.add_argument("--force", action="store_true", help="Seed even outside embedded mode.")

    def handle(self, *args, force=False, **options):
        if not settings.EMBEDDED and not force:
            raise CommandError("seed_demo creates accounts with published passwords; it runs in embedded mode only (or with --force).")
        created = self._seed()
        self._sync_inventory()
        self.stdout.write(self.style.SUCCESS(f"Demo data ready ({created} new objects). Users: "
                                             + ", ".join(u for u, _, _ in USERS) + f"; password: {DEMO_PASSWORD}"))

    @transaction.atomic
    def _seed(self) -> int:
        created = 0
        users = {}
        for username, full_name, flags in USERS:
            first, last = full_name.split(" ", 1)
            user, new = User.objects.get_or_create(username=username, defaults={"first_name": first, "last_name": last,
                                                                                "email": f"{username}@demo.local", **flags})
            if new:
                user.set_password(DEMO_PASSWORD)
                user.save(update_fields=["password"])
                created += 1
            users[username] = user
        teams = {}
        for slug, name, description, members in TEAMS:
            team, new = Team.objects.get_or_create(slug=slug, defaults={"name": name, "description": description})
            TeamPolicy.objects.get_or_create(team=team, defaults={"borrow_limit": 4, "idle_window_minutes": 30})
            created += new
            teams[slug] = team
            for username, role in members:
                _, new = Membership.objects.get_or_create(team=team, user=users[username], defaults={"role": role})
                created += new
        for slug, flavor, count in GRANTS:
            if not QuotaGrant.objects.filter(team=teams[slug], flavor=flavor).exists():
                QuotaGrant.objects.create(team=teams[slug], flavor=flavor, count=count, starts_at=timezone.now(),
                                          created_by=users["admin"])
                created += 1
        from workspaces.models import Image

        for name, reference, description in IMAGES:
            _, new = Image.objects.get_or_create(name=name, defaults={"reference": reference, "description": description})
            created += new
        if created:
            audit_record(action="demo.seed", actor=None, target_type="demo", target_id="seed_demo",
                         changes={"created_objects": created})
        return created

    def _sync_inventory(self):
        from scheduler.inventory import inventory_sync_all

        nodes = inventory_sync_all()
        self.stdout.write(f"Simulated fleet registered: {len(nodes)} nodes.")
