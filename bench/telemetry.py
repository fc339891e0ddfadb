"""Telemetry benchmark (issue 5). Prints figures; the last line is one `key=value ...` line.

1. Ingest: a simulated fleet of --gpus GPUs (8 per node, 60 % allocated so the patterns vary) sampled
   at 1 Hz for --seconds seconds of fleet time, through the product's sampling path
   (scheduler.telemetry.telemetry_sample_nodes: 3 queries + ONE COPY per interval) as fast as it
   goes. Also the per-node path a node agent runs (one sample + COPY per node) on a share of the
   intervals. Figures: ingest_samples_per_s (goal >= 20,000) and ingest_cpu_share = CPU seconds of
   this process plus its PostgreSQL backend, divided by the fleet time ingested (the share of one
   core that keeping up with the fleet costs).
2. Fan-out: the real ASGI server (uvicorn, portal.asgi) with the Redis channel layer, --clients
   websocket clients (session-authenticated, subscribed to `fleet`) in client processes; --messages
   node messages (8 GPUs each) published with their sample time; latency = receipt - sample time:
   fanout_p50_ms, fanout_p99_ms (goal p99 <= 250 ms). Then the same messages to the same number of
   raw Redis pub/sub subscribers: raw_redis_p99_ms and fanout_vs_raw_redis_p99_ratio.

    DATABASE_URL=postgres://... REDIS_URL=redis://... SECRET_KEY=x python bench/telemetry.py
    python bench/telemetry.py --tiny      # seconds, for the test suite; SQLite when no DATABASE_URL

Bounded: every phase has a deadline; the rows it creates are deleted at the end.
"""

import argparse
import asyncio
import json
import multiprocessing
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BENCH_PREFIX = "bench-tel-"


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="a few seconds: 64 GPUs, 3 s, 20 clients, 5 messages")
    p.add_argument("--gpus", type=int, default=4096)
    p.add_argument("--seconds", type=int, default=60)
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--messages", type=int, default=40)
    p.add_argument("--client-procs", type=int, default=4)
    p.add_argument("--skip-fanout", action="store_true")
    args = p.parse_args()
    if args.tiny:
        args.gpus, args.seconds, args.clients, args.messages, args.client_procs = 64, 3, 20, 5, 2
    return args


def setup_django(tmp: Path, fleet_file: Path) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    os.environ.setdefault("SECRET_KEY", "bench-only-secret")
    os.environ["PORTAL_TASKS"] = "eager"
    os.environ["PORTAL_GPU_SOURCE"] = f"simulated:{fleet_file}"
    if not os.environ.get("DATABASE_URL"):
        os.environ["SQLITE_PATH"] = str(tmp / "bench.sqlite3")
        os.environ["PORTAL_LOCAL_DIR"] = str(tmp)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def write_fleet(path: Path, gpus: int) -> list[str]:
    names = [f"{BENCH_PREFIX}{i:04d}" for i in range((gpus + 7) // 8)]
    lines = ["nodes:"]
    for name in names:
        lines += [f"  - name: {name}", "    gpus: {model: H100, count: 8, memory_gb: 80}"]
    path.write_text("\n".join(lines) + "\n")
    return names


def cleanup() -> None:
    from governance.models import Team
    from scheduler.models import Allocation, AllocationRequest, GpuHealthEvent, GpuRollup, GpuSample, Node

    gpu_ids = list(Node.objects.filter(name__startswith=BENCH_PREFIX).values_list("gpus__id", flat=True))
    GpuSample.objects.filter(gpu_id__in=gpu_ids).delete()
    GpuRollup.objects.filter(gpu_id__in=gpu_ids).delete()
    Allocation.objects.filter(node__name__startswith=BENCH_PREFIX).delete()
    AllocationRequest.objects.filter(team__slug="bench-telemetry").delete()
    GpuHealthEvent.objects.filter(node__name__startswith=BENCH_PREFIX).delete()
    Node.objects.filter(name__startswith=BENCH_PREFIX).delete()
    Team.objects.filter(slug="bench-telemetry").delete()


def register_fleet(names: list[str]):
    """Inventory rows straight from the fleet file (bulk: a bench, not the agent's path), and 60 %
    of the GPUs allocated to a bench team."""
    from django.utils import timezone

    from governance.models import Team, User
    from scheduler import gpus
    from scheduler.models import Allocation, AllocationRequest, GpuDevice, Node

    source = gpus.source()
    now = timezone.now()
    nodes = Node.objects.bulk_create([Node(name=n, simulated=True, last_heartbeat=now) for n in names])
    rows = []
    for node in nodes:
        for g in source.inventory(node.name).gpus:
            rows.append(GpuDevice(node=node, uuid=g.uuid, index=g.index, model=g.model, memory_mb=g.memory_mb))
    GpuDevice.objects.bulk_create(rows, batch_size=2000)
    team, _ = Team.objects.get_or_create(slug="bench-telemetry", defaults={"name": "Bench telemetry"})
    user, _ = User.objects.get_or_create(username="bench-telemetry", defaults={"is_auditor": True})
    gpu_rows = list(GpuDevice.objects.filter(node__in=nodes).order_by("id"))
    chosen = [g for i, g in enumerate(gpu_rows) if i % 5 < 3]
    requests = AllocationRequest.objects.bulk_create([AllocationRequest(team=team, user=user, flavor="H100", state="placed")
                                                      for _ in chosen], batch_size=2000)
    Allocation.objects.bulk_create([Allocation(request=r, team=team, node_id=g.node_id, gpu=g) for r, g in zip(requests, chosen)],
                                   batch_size=2000)
    return user


def backend_cpu_seconds() -> float | None:
    """CPU seconds of this connection's PostgreSQL backend, when it runs on this machine."""
    from django.db import connection

    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def bench_ingest(names: list[str], seconds: int) -> dict:
    from django.db import connection

    from scheduler import telemetry
    from scheduler.models import GpuSample

    t0 = time.time() - seconds - 5
    telemetry.telemetry_sample_nodes(node_names=names[:1], now=t0 - 1, publish=False)  # warm up
    backend_before, cpu_before = backend_cpu_seconds(), own_cpu_seconds()
    started = time.perf_counter()
    stored = 0
    for second in range(seconds):
        stored += telemetry.telemetry_sample_nodes(node_names=names, now=t0 + second, publish=False)
    wall = time.perf_counter() - started
    cpu = own_cpu_seconds() - cpu_before
    backend_after = backend_cpu_seconds()
    backend = (backend_after - backend_before) if backend_before is not None and backend_after is not None else None

    # The node agent's path: each node alone (3 queries + one COPY of its 8 GPUs) for a few intervals.
    per_node_intervals = max(1, min(3, seconds))
    started_node = time.perf_counter()
    stored_node = 0
    for second in range(per_node_intervals):
        for name in names:
            stored_node += telemetry.telemetry_sample_node(node_name=name, now=t0 + seconds + second, publish=False)
    wall_node = time.perf_counter() - started_node
    rows = GpuSample.objects.filter(gpu__node__name__startswith=BENCH_PREFIX).count()
    return {
        "ingest_samples": stored, "ingest_wall_s": round(wall, 3), "ingest_samples_per_s": round(stored / wall),
        "ingest_cpu_s": round(cpu + (backend or 0.0), 3), "ingest_client_cpu_s": round(cpu, 3),
        "ingest_backend_cpu_s": round(backend, 3) if backend is not None else "n/a",
        "ingest_cpu_share": round((cpu + (backend or 0.0)) / seconds, 4),
        # what one core would ingest: the wall figure depends on what else the machine runs
        "ingest_samples_per_cpu_s": round(stored / (cpu + (backend or 0.0))) if cpu + (backend or 0.0) > 0 else "n/a",
        "ingest_per_node_samples_per_s": round(stored_node / wall_node), "rows_in_db": rows,
        "database": connection.vendor,
    }


# --- fan-out ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session_cookie(user) -> str:
    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore

    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.save()
    return f"{settings.SESSION_COOKIE_NAME}={session.session_key}"


def _client_proc(mode: str, count: int, url: str, cookie: str, redis_url: str, channel: str, expect: int,
                 ready, results, deadline_s: float):
    """A client process: `count` websocket (mode ws) or raw Redis (mode redis) subscribers; each
    latency (ms) from a message's sample time to its receipt is sent back."""
    handshakes = None

    async def ws_client(latencies, ready_event):
        import websockets

        headers = {"Cookie": cookie, "Origin": url.replace("ws://", "http://").split("/ws/")[0]}
        # Handshakes are limited per process: the figure measured is fan-out, not a connect storm
        # (each handshake reads the session and the user's roles from the database).
        for attempt in range(5):
            try:
                async with handshakes:
                    ws = await websockets.connect(url, additional_headers=headers, max_queue=None, open_timeout=60)
                    await ws.send(json.dumps({"action": "subscribe", "target": "fleet", "id": ""}))
                    while json.loads(await ws.recv()).get("type") != "subscribed":
                        pass
                break
            except (OSError, websockets.InvalidMessage, websockets.InvalidStatus, asyncio.TimeoutError):
                if attempt == 4:
                    raise
                await asyncio.sleep(0.5 * (attempt + 1))
        async with ws:
            ready_event()
            got = 0
            while got < expect:
                msg = json.loads(await ws.recv())
                if msg.get("type") != "samples":
                    continue
                now = time.time()
                for item in msg["items"]:
                    latencies.append((item["ts"], (now - item["ts"]) * 1000))
                    got += 1
            await asyncio.sleep(3)  # stay until every client has the last message: no close storm mid-send

    async def redis_client(latencies, ready_event):
        import redis.asyncio as aioredis

        conn = aioredis.Redis.from_url(redis_url)
        pubsub = conn.pubsub()
        await pubsub.subscribe(channel)
        ready_event()
        got = 0
        while got < expect:
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
            if msg is None:
                continue
            now = time.time()
            sent = json.loads(msg["data"])["ts"]
            latencies.append((sent, (now - sent) * 1000))
            got += 1
        await asyncio.sleep(3)
        await pubsub.aclose()
        await conn.aclose()

    async def main():
        nonlocal handshakes
        handshakes = asyncio.Semaphore(8)
        latencies = []

        def one_ready():
            ready.put(1)

        make = ws_client if mode == "ws" else redis_client
        tasks = []
        for _ in range(count):
            tasks.append(asyncio.ensure_future(make(latencies, one_ready)))
        try:
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=deadline_s)
        except asyncio.TimeoutError:
            pass
        failed = [t.exception() for t in tasks if t.done() and not t.cancelled() and t.exception() is not None]
        if failed:
            print(f"{mode} client errors: {len(failed)}, first: {failed[0]!r}", flush=True)
        results.put((latencies, len(failed)))

    asyncio.run(main())


def _node_message(node_id: int, n: int) -> dict:
    gpus = [{"uuid": f"GPU-bench-{node_id}-{i}", "i": i, "s": -1, "model": "H100", "team": None, "u": 0.5, "um": 0.3,
             "mu": 40 * 2**30, "mt": 80 * 2**30, "p": 350.0, "pl": 700.0, "t": 60.0, "c": 1980.0, "ecc": 0} for i in range(8)]
    return {"type": "telemetry.sample", "node": node_id, "name": f"{BENCH_PREFIX}{n}", "ts": time.time(), "simulated": True, "gpus": gpus}


def _run_clients(mode, args, url, cookie, redis_url, channel, publish) -> tuple[list[float], int]:
    ctx = multiprocessing.get_context("spawn")
    ready, results = ctx.Queue(), ctx.Queue()
    per = [args.clients // args.client_procs + (1 if i < args.clients % args.client_procs else 0) for i in range(args.client_procs)]
    deadline = 150 + args.messages * 0.5 + 15
    procs = [ctx.Process(target=_client_proc, args=(mode, n, url, cookie, redis_url, channel, args.messages, ready, results, deadline))
             for n in per if n]
    for p in procs:
        p.start()
    connected = 0
    connect_deadline = time.time() + 150
    while connected < args.clients and time.time() < connect_deadline:
        try:
            connected += ready.get(timeout=max(0.1, connect_deadline - time.time()))
        except Exception:  # noqa: BLE001 - queue.Empty: the deadline passed
            break
    if connected < args.clients:
        print(f"fanout {mode}: only {connected}/{args.clients} clients connected", flush=True)
    time.sleep(1.0)
    publish()
    latencies, errors = [], 0
    for _ in procs:
        try:
            lat, err = results.get(timeout=deadline + 30)
        except Exception:  # noqa: BLE001
            break
        latencies += lat
        errors += err
    for p in procs:
        p.join(timeout=10)
        if p.is_alive():
            p.kill()
    return latencies, errors


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def bench_fanout(args, user, tmp: Path) -> dict:
    redis_url = os.environ.get("REDIS_URL")
    if not redis_url:
        print("fanout: skipped (REDIS_URL not set: the fan-out runs through the Redis channel layer)", flush=True)
        return {}
    from channels.layers import channel_layers, get_channel_layer
    from django.conf import settings

    port = free_port()
    # a channel-layer prefix and pub/sub channel of this run's own: nothing else on this Redis
    # receives the bench's messages, and the bench receives nothing else
    run_id = uuid.uuid4().hex[:10]
    os.environ["CHANNEL_LAYER_PREFIX"] = f"bench-{run_id}"
    settings.CHANNEL_LAYERS["default"]["CONFIG"]["prefix"] = f"bench-{run_id}"
    channel_layers.backends = {}
    raw_channel = f"bench.fanout.raw.{run_id}"
    env = {**os.environ, "ALLOWED_HOSTS": "127.0.0.1,localhost", "PORTAL_INPROCESS_BEAT": "0", "DEBUG": "0",
           "SECURE_SSL_REDIRECT": "0", "SESSION_COOKIE_SECURE": "0", "CSRF_COOKIE_SECURE": "0", "LOG_LEVEL": "WARNING"}
    server = subprocess.Popen([sys.executable, "-m", "uvicorn", "portal.asgi:application", "--host", "127.0.0.1", "--port", str(port),
                               "--log-level", "warning", "--ws", "websockets-sansio", "--ws-max-queue", "64", "--backlog", "4096",
                               # as `make web` runs it: no per-message compression (each frame would be
                               # compressed once per client)
                               "--ws-per-message-deflate", "false"],
                              cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=open(tmp / "uvicorn.log", "w"))
    try:
        import httpx

        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline or server.poll() is not None:
                raise RuntimeError(f"uvicorn did not start: {(tmp / 'uvicorn.log').read_text()[-2000:]}")
            time.sleep(0.3)
        cookie = session_cookie(user)
        url = f"ws://127.0.0.1:{port}/ws/telemetry/"
        messages = [_node_message(900000 + n, n) for n in range(args.messages)]
        interval = 0.5

        def publish_ws():
            layer = get_channel_layer()

            async def go():
                for message in messages:
                    message["ts"] = time.time()
                    await layer.group_send("fleet", {**message, "group": "fleet"})  # as publish_node sends it
                    await asyncio.sleep(interval)
            asyncio.run(go())

        def publish_raw():
            import redis

            conn = redis.Redis.from_url(redis_url)
            for message in messages:
                message["ts"] = time.time()
                conn.publish(raw_channel, json.dumps(message))
                time.sleep(interval)

        ws_lat, ws_err = _run_clients("ws", args, url, cookie, redis_url, "", publish_ws)
        raw_lat, raw_err = _run_clients("redis", args, url, cookie, redis_url, raw_channel, publish_raw)
    finally:
        log_tail = (tmp / "uvicorn.log").read_text()[-1500:]
        if log_tail.strip():
            print(f"uvicorn log (tail):\n{log_tail}", flush=True)
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
    for name, pairs in (("fanout", ws_lat), ("raw_redis", raw_lat)):
        by_message: dict[float, list[float]] = {}
        for sent, ms in pairs:
            by_message.setdefault(sent, []).append(ms)
        worst = sorted(by_message.items(), key=lambda kv: -max(kv[1]))[:3]
        first = min(by_message) if by_message else None
        print(f"{name}: per message (ms) worst max/p50: "
              + ", ".join(f"#{sorted(by_message).index(k)} {max(v):.0f}/{_percentile(v, 50):.0f}" for k, v in worst)
              + (f"; first message p50 {_percentile(by_message[first], 50):.0f}" if first else ""), flush=True)
    ws_lat = [ms for _sent, ms in ws_lat]
    raw_lat = [ms for _sent, ms in raw_lat]
    expected = args.clients * args.messages
    p99_ws, p99_raw = _percentile(ws_lat, 99), _percentile(raw_lat, 99)
    return {
        "fanout_clients": args.clients, "fanout_messages": args.messages,
        "fanout_received": len(ws_lat), "fanout_expected": expected, "fanout_client_errors": ws_err,
        "fanout_p50_ms": round(_percentile(ws_lat, 50), 1), "fanout_p99_ms": round(p99_ws, 1),
        "fanout_max_ms": round(max(ws_lat), 1) if ws_lat else float("nan"),
        "raw_redis_received": len(raw_lat), "raw_redis_client_errors": raw_err,
        "raw_redis_p50_ms": round(_percentile(raw_lat, 50), 1), "raw_redis_p99_ms": round(p99_raw, 1),
        "fanout_vs_raw_redis_p99_ratio": round(p99_ws / p99_raw, 2) if raw_lat and ws_lat and p99_raw > 0 else float("nan"),
    }


def main():
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-telemetry-") as tmpdir:
        tmp = Path(tmpdir)
        fleet_file = tmp / "fleet.yaml"
        names = write_fleet(fleet_file, args.gpus)
        setup_django(tmp, fleet_file)
        cleanup()
        results = {"gpus": len(names) * 8, "nodes": len(names), "fleet_seconds": args.seconds, "cpus": os.cpu_count(),
                   "load_avg_1m": round(os.getloadavg()[0], 2)}
        try:
            user = register_fleet(names)
            results.update(bench_ingest(names, args.seconds))
            print(" ".join(f"{k}={v}" for k, v in results.items()), flush=True)
            if not args.skip_fanout:
                results.update(bench_fanout(args, user, tmp))
        finally:
            cleanup()
            from governance.models import User

            User.objects.filter(username="bench-telemetry").delete()
    keys = ["gpus", "fleet_seconds", "cpus", "database", "ingest_samples_per_s", "ingest_cpu_share", "ingest_samples_per_cpu_s", "load_avg_1m", "ingest_per_node_samples_per_s",
            "fanout_clients", "fanout_received", "fanout_expected", "fanout_p50_ms", "fanout_p99_ms", "raw_redis_p50_ms",
            "raw_redis_p99_ms", "fanout_vs_raw_redis_p99_ratio"]
    print(" ".join(f"{k}={results[k]}" for k in keys if k in results), flush=True)


if __name__ == "__main__":
    main()
