"""Register every node of the GPU source (the simulated fleet in the embedded default, this host
under NVML): idempotent, safe to run at every start."""

from django.core.management.base import BaseCommand

from scheduler import gpus
from scheduler.inventory import inventory_sync_all


class Command(BaseCommand):
    help = "Register or refresh the GPU inventory of every node the GPU source knows."

    def handle(self, *args, **options):
        nodes = inventory_sync_all()
        label = "simulated" if gpus.source().simulated else "NVML"
        for node in nodes:
            self.stdout.write(f"{node.name}: {node.state}, {node.gpus.count()} GPUs ({label})")
        self.stdout.write(self.style.SUCCESS(f"{len(nodes)} node(s) registered"))
