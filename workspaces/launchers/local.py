"""The local-process launcher (the embedded default): `jupyter lab` as a child process in its own
session, on 127.0.0.1, only the allocated GPUs visible.

Each lab is marked so the reconciler can find it after a portal restart: its environment carries
PORTAL_WORKSPACE_ID and PORTAL_LAUNCH_ROOT (this portal's workspace root, so two portals on one
host never adopt each other's labs), and its handle is "pid:<pid>:<start ticks>" so a reused pid is
never mistaken for the lab. A pid file and the lab's log live under <root>/.run/.
"""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from django.conf import settings

from workspaces.launchers.base import InstanceStatus, LaunchError, Launcher, LaunchResult, LaunchSpec, OwnedInstance

STOP_GRACE_S = 5.0
# What the lab inherits from the portal's environment: nothing secret (no SECRET_KEY, DATABASE_URL ...).
PASSED_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR", "LD_LIBRARY_PATH", "CUDA_HOME", "SSL_CERT_FILE")


def _root() -> Path:
    return Path(settings.PORTAL_WORKSPACE_ROOT)


def _run_dir() -> Path:
    path = _root() / ".run"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _safe(part: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_.@-]", "_", part) or "_"


def _jupyter() -> str:
    return settings.PORTAL_JUPYTER_COMMAND or str(Path(sys.prefix) / "bin" / "jupyter")


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat fields after the command name (index 0 = state, 3 = session, 19 = start ticks)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return raw.rsplit(")", 1)[1].split()


def _start_ticks(pid: int) -> str | None:
    fields = _stat(pid)
    return fields[19] if fields else None


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return {}
    env = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env


def parse_handle(handle: str) -> tuple[int, str]:
    try:
        kind, pid, ticks = handle.split(":")
        if kind != "pid":
            raise ValueError
        return int(pid), ticks
    except ValueError:
        raise LaunchError(f"Not a local-process handle: {handle!r}") from None


class LocalLauncher(Launcher):
    name = "local"

    # --- start ---------------------------------------------------------------------------

    def _reservation_stale(self, path: Path) -> bool:
        """A port reservation whose lab is gone (a crash between reserving and stopping)."""
        try:
            workspace_id = path.read_text().strip()
            age = time.time() - path.stat().st_mtime
        except OSError:
            return False
        pid_file = _run_dir() / f"ws-{workspace_id}.pid"
        try:
            handle = pid_file.read_text().strip()
        except OSError:
            return age > 120  # never started, or still starting: wait a while before reclaiming
        return self.status(handle).state != "running"

    def _reserve_port(self, workspace_id: int) -> int:
        """A free port from PORTAL_LAB_PORT_RANGE, reserved with an O_EXCL file so that launches in
        several worker processes at once never pick the same one."""
        low, high = settings.PORTAL_LAB_PORT_RANGE
        run = _run_dir()
        candidates = list(range(low, high + 1))
        random.shuffle(candidates)
        for port in candidates:
            path = run / f"port-{port}"
            for _attempt in range(2):
                try:
                    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
                except FileExistsError:
                    if self._reservation_stale(path):
                        path.unlink(missing_ok=True)
                        continue
                    break
                with os.fdopen(fd, "w") as fh:
                    fh.write(str(workspace_id))
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    try:
                        sock.bind(("127.0.0.1", port))
                    except OSError:  # taken by something that is not a lab of ours
                        path.unlink(missing_ok=True)
                        break
                return port
        raise LaunchError(f"No free port left in PORTAL_LAB_PORT_RANGE {low}-{high}.")

    def workdir(self, spec: LaunchSpec) -> Path:
        """One directory per user per team, kept after stop (the local launcher's volume)."""
        return _root() / _safe(spec.team_slug) / _safe(spec.owner_username)

    def start(self, spec: LaunchSpec) -> LaunchResult:
        workdir = self.workdir(spec)
        workdir.mkdir(parents=True, exist_ok=True)
        port = self._reserve_port(spec.workspace_id)
        run = _run_dir()
        devices = ",".join(spec.device_uuids)
        env = {key: os.environ[key] for key in PASSED_ENV if key in os.environ}
        env.update(spec.env)
        env.update({
            "HOME": str(workdir),
            "PYTHONUNBUFFERED": "1",
            # Only the allocated GPUs (or MIG slices); none at all when the list is empty.
            "CUDA_VISIBLE_DEVICES": devices,
            "NVIDIA_VISIBLE_DEVICES": devices or "void",
            # The token goes by environment, not argv: argv is readable by every local user.
            "JUPYTER_TOKEN": spec.token,
            "PORTAL_WORKSPACE_ID": str(spec.workspace_id),
            "PORTAL_LAUNCH_ROOT": str(_root()),
        })
        command = [
            _jupyter(), "lab",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={port}",
            "--ServerApp.port_retries=0",
            f"--ServerApp.base_url={spec.base_url}",
            f"--ServerApp.root_dir={workdir}",
            # Only same-origin browser requests; the portal's proxy is the only client.
            "--ServerApp.allow_origin=",
            "--ServerApp.allow_remote_access=False",
            "--ServerApp.open_browser=False",
            "--LabApp.news_url=",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ]
        if os.geteuid() == 0:
            command.append("--allow-root")  # containers and CI runners; the lab is still confined to 127.0.0.1
        log_path = run / f"ws-{spec.workspace_id}.log"
        try:
            with open(log_path, "ab") as log:
                process = subprocess.Popen(  # noqa: S603 — fixed argv, no shell
                    command, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True, close_fds=True,
                )
        except OSError as exc:
            raise LaunchError(f"Could not run {command[0]}: {exc}") from exc
        # Reap it when it exits (no zombie that looks alive); a restarted portal re-adopts by /proc.
        threading.Thread(target=process.wait, name=f"lab-reaper-{process.pid}", daemon=True).start()
        ticks = _start_ticks(process.pid)
        if ticks is None:
            (run / f"port-{port}").unlink(missing_ok=True)
            raise LaunchError(f"JupyterLab exited at once:\n{self._tail(log_path)}")
        handle = f"pid:{process.pid}:{ticks}"
        (run / f"ws-{spec.workspace_id}.pid").write_text(handle)
        (run / f"ws-{spec.workspace_id}.port").write_text(str(port))
        return LaunchResult(handle=handle, host="127.0.0.1", port=port, image_digest="")

    # --- inspect -------------------------------------------------------------------------

    def _alive(self, pid: int, ticks: str) -> bool:
        fields = _stat(pid)
        return bool(fields) and fields[19] == ticks and fields[0] not in ("Z", "X")

    def status(self, handle: str) -> InstanceStatus:
        pid, ticks = parse_handle(handle)
        fields = _stat(pid)
        if fields is None or fields[19] != ticks:
            return InstanceStatus("missing", f"process {pid} is gone")
        if fields[0] in ("Z", "X"):
            return InstanceStatus("exited", f"process {pid} exited")
        return InstanceStatus("running")

    def list_owned(self) -> list[OwnedInstance]:
        root = str(_root())
        owned = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            fields = _stat(pid)
            # Session leaders only: the lab's kernels and terminals inherit its environment too.
            if not fields or int(fields[3]) != pid or fields[0] in ("Z", "X"):
                continue
            env = _environ(pid)
            if env.get("PORTAL_LAUNCH_ROOT") != root or not env.get("PORTAL_WORKSPACE_ID", "").isdigit():
                continue
            owned.append(OwnedInstance(handle=f"pid:{pid}:{fields[19]}", workspace_id=int(env["PORTAL_WORKSPACE_ID"])))
        return owned

    def _files_for(self, handle: str) -> tuple[Path, ...]:
        for pid_file in _run_dir().glob("ws-*.pid"):
            try:
                if pid_file.read_text().strip() == handle:
                    stem = pid_file.with_suffix("")
                    port_file = stem.with_suffix(".port")
                    try:
                        reservation = _run_dir() / f"port-{port_file.read_text().strip()}"
                    except OSError:
                        reservation = port_file
                    return pid_file, port_file, reservation, stem.with_suffix(".log")
            except OSError:
                continue
        return ()

    @staticmethod
    def _tail(path: Path, lines: int = 20) -> str:
        try:
            with open(path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - 16384))
                text = fh.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def logs_tail(self, handle: str, lines: int = 20) -> str:
        files = self._files_for(handle)
        return self._tail(files[-1], lines) if files else ""

    # --- stop ----------------------------------------------------------------------------

    def stop(self, handle: str) -> None:
        """SIGTERM the lab's process group (kernels, terminals), SIGKILL after STOP_GRACE_S."""
        pid, ticks = parse_handle(handle)
        if self._alive(pid, ticks):
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + STOP_GRACE_S
            while time.monotonic() < deadline and self._alive(pid, ticks):
                time.sleep(0.05)
            if self._alive(pid, ticks):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        else:
            # The leader is gone; orphaned kernels of its group may remain.
            try:
                if _start_ticks(pid) is None:
                    os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for path in self._files_for(handle)[:3]:  # pid, port and reservation; the log stays for diagnosis
            path.unlink(missing_ok=True)
