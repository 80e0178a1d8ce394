"""Load generator for the MDM server: N simulated devices against ``bsipatch mdm serve``.

The lead's measurement, on a quiet machine (2 cores), one command per database:

    python bench/mdm_load.py --db sqlite:////tmp/mdm-bench.db --devices 2000 --seconds 20
    python bench/mdm_load.py --db postgresql-temp --devices 2000 --seconds 20
    python bench/mdm_load.py --db postgresql-temp --devices 2000 --seconds 20 --rate 1000

(remove /tmp/mdm-bench.db* between SQLite runs; add ``--fleet 100000`` for the fleet-view
timing at 100,000 devices). The first two run closed-loop (every connection sends its
next report as soon as the last is answered: the most the server sustains); ``--rate
1000`` offers 1,000 reports/s open-loop (each connection on a fixed schedule, latency
counted from the scheduled send time, so a stall is not hidden) and says whether the
server kept up. The goal is >= 1,000 reports/s with p99 < 100 ms on PostgreSQL.

``--db postgresql-temp`` starts a private PostgreSQL cluster with Debian's
``postgresql`` package (``initdb``/``pg_ctl`` from /usr/lib/postgresql/*/bin, via
tests/pgcluster.py): a temporary directory under /tmp, listening on 127.0.0.1 on a free
port, ``fsync=on`` and the default ``synchronous_commit=on``, with pg_stat_statements
loaded so the statements per report can be counted. PostgreSQL refuses to run as root,
so as root (as in .ci/run) the cluster runs as the ``postgres`` user through ``runuser``;
it is stopped and removed at the end. ``--db postgresql://...`` uses a server you run.

Each simulated device has its own enrolment and sends incremental status reports with
its own ReportSequence; every 8th report of a device changes its release (so history
grows). Bounded in count (``--devices``) and time (``--seconds``). Clients run in
``--procs`` processes, each with ``--conns`` keep-alive HTTP/1.1 connections on
127.0.0.1 (raw asyncio streams on uvloop: the client must cost less than the server).
It shares the machine with the server, so it reports its own CPU too. Prints one JSON
document: devices, duration, reports/s sustained, p50/p99 latency, CPU ms per report of
the server, of PostgreSQL and of the load generator, statements and transactions per
report (PostgreSQL), reports per group commit, the load average before and after,
database size per device, and (with ``--fleet N``) the time of the fleet queries and of
the fleet page over HTTP with N more devices in the database.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import multiprocessing as mp
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from mdmserver import free_port, start_server

from bsipatch.mdm import fleet
from bsipatch.mdm.items import nest
from bsipatch.mdm.reports import daily_counts
from bsipatch.mdm.serve import open_store

SECRET = "bench-secret"
EXTRAS = [None, "(a)", "(b)", "(c)"]


def bulk_devices(store, first: int, count: int, *, reported: bool) -> None:
    """Insert ``count`` devices named dev<first..>, optionally with a reported state."""
    db = store.db
    now = time.time()
    h = hashlib.sha256(SECRET.encode()).hexdigest()
    rng = random.Random(first)
    rows, hist = [], []
    for i in range(first, first + count):
        if not reported:
            rows.append((f"dev{i}", h, now, None, "{}", None, None, None, None, None, None, None))
            continue
        extra = rng.choice(EXTRAS)
        rel = f"26.1 {extra}" if extra else "26.1"
        state = rng.choices(["up-to-date", "deferred", "failed"], [90, 7, 3])[0]
        seen = now - rng.uniform(0, 20) * 86400
        items = {
            "device.operating-system.version": {"value": "26.1", "updated": seen},
            "device.operating-system.build-version": {"value": "23B85", "updated": seen},
            "device.operating-system.supplemental.extra-version": {"value": extra, "updated": seen},
            "softwareupdate.install-state": {"value": state, "updated": seen},
        }
        rows.append(
            (
                f"dev{i}",
                h,
                now - 30 * 86400,
                seen,
                json.dumps(items),
                "26.1",
                "23B85",
                f"23B85{extra[1]}" if extra else None,
                extra,
                rel,
                state,
                "disk full" if state == "failed" else None,
            )
        )
        hist.append((i, now - 30 * 86400 + rng.uniform(0, 86400), None, "26.1"))
        if extra:
            hist.append((i, now - rng.uniform(0, 25) * 86400, "26.1", rel))
    with db.connect() as conn:
        db.executemany(
            conn,
            "INSERT INTO devices (name, secret_hash, enrolled, last_seen, items, os_version, "
            "build, supplemental_build, extra_version, release_id, install_state, last_error) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        if hist:
            ids = dict(db.execute(conn, "SELECT name, id FROM devices"))
            db.executemany(
                conn,
                "INSERT INTO release_history (device_id, at, from_release, to_release) "
                "VALUES (?, ?, ?, ?)",
                [(ids[f"dev{i}"], at, f, t) for i, at, f, t in hist],
            )
            db.executemany(
                conn,
                "INSERT INTO release_daily (day, release_id, delta) VALUES (?, ?, ?) "
                "ON CONFLICT (day, release_id) DO UPDATE SET "
                "delta = release_daily.delta + excluded.delta",
                daily_counts([(0, at, f, t, None, None) for _, at, f, t in hist]),
            )
        db.execute(
            conn,
            "UPDATE devices SET deferred_release = '26.1 (c)', deferred_since = ? "
            "WHERE install_state = 'deferred'",
            (now - 5 * 86400,),
        )


def _cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tree(root: int) -> list[int]:
    """``root`` and its direct children (the PostgreSQL postmaster's backends)."""
    pids = [root]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == root:
                pids.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return pids


def cpu_seconds(server_pid: int, postmaster: int | None) -> dict:
    out = {"server": sum(_cpu(p) for p in _tree(server_pid))}
    if postmaster:
        out["postgres"] = sum(_cpu(p) for p in _tree(postmaster))
    return out


def report_body(seq: int, dev: int) -> bytes:
    items = {
        "softwareupdate.install-state": "up-to-date",
        "bsipatch.agent.last-event": {"event": "check", "time": "2026-11-28T10:00:00Z"},
    }
    if seq % 8 == 1:
        items["device.operating-system.version"] = "26.1"
        items["device.operating-system.build-version"] = "23B85"
        items["device.operating-system.supplemental.extra-version"] = EXTRAS[(seq // 8 + dev) % 4]
    return json.dumps({"StatusItems": nest(items), "ReportSequence": seq}).encode()


async def _conn_loop(port, devices, start, end, warm_until, interval, lat, counts):
    """One keep-alive connection. ``interval`` 0: closed loop; else one report every
    ``interval`` s on a fixed schedule, latency counted from the scheduled time."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    seqs = dict.fromkeys(devices, 0)
    k = 0
    due = start + (random.random() * interval if interval else 0.0)  # spread the phases
    while True:
        if interval:
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
        if time.monotonic() >= end:
            break
        dev = devices[k % len(devices)]
        k += 1
        seqs[dev] += 1
        body = report_body(seqs[dev], dev)
        head = (
            f"PUT /mdm/status HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
            f"{dev}.{SECRET}\r\nContent-Type: application/json\r\nContent-Length: "
            f"{len(body)}\r\n\r\n"
        ).encode()
        t0 = due if interval else time.monotonic()
        writer.write(head + body)
        status = await reader.readline()
        length = 0
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b""):
                break
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await reader.readexactly(length)
        t1 = time.monotonic()
        due += interval
        if not status.startswith(b"HTTP/1.1 200"):
            counts["errors"] += 1
            continue
        counts["all"] += 1
        if t0 < warm_until:
            continue
        lat.append(t1 - t0)
        counts["ok"] += 1
    writer.close()


def _client_proc(port, devices, conns, seconds, warmup, rate, out_q):
    async def main():
        start = time.monotonic()
        lat, counts = [], {"ok": 0, "errors": 0, "all": 0}
        per = [devices[i::conns] for i in range(conns)]
        per = [d for d in per if d]
        interval = len(per) / rate if rate else 0.0
        await asyncio.gather(
            *(
                _conn_loop(port, d, start, start + warmup + seconds, start + warmup, interval,
                           lat, counts)
                for d in per
            )
        )  # fmt: skip
        cpu = os.times()
        out_q.put((lat, counts, cpu.user + cpu.system))

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


def run_load(port, ids, procs, conns, seconds, warmup, rate=0.0):
    """Run the clients; ``rate`` > 0 offers that many reports/s in total (open loop)."""
    q = mp.Queue()
    ps = [
        mp.Process(
            target=_client_proc,
            args=(port, ids[i::procs], conns, seconds, warmup, rate / procs if rate else 0.0, q),
        )
        for i in range(procs)
    ]
    for p in ps:
        p.start()
    lat, ok, errors, every, client_cpu = [], 0, 0, 0, 0.0
    for _ in ps:
        part, counts, cpu = q.get()
        lat += part
        ok += counts["ok"]
        errors += counts["errors"]
        every += counts["all"]
        client_cpu += cpu
    for p in ps:
        p.join()
    lat.sort()
    pick = lambda f: round(lat[min(len(lat) - 1, int(f * len(lat)))] * 1000, 2) if lat else None  # noqa: E731
    out = {
        "reports": ok,
        "all_reports": every,
        "errors": errors,
        "seconds": seconds,
        "reports_per_s": round(ok / seconds, 1),
        "p50_ms": pick(0.50),
        "p99_ms": pick(0.99),
        "max_ms": pick(1.0),
        "client_cpu_s": round(client_cpu, 2),
    }
    if rate:
        out["offered_per_s"] = rate
        out["kept_up"] = ok / seconds >= 0.98 * rate
    return out


def measure_fleet(store, port, token, repeat=3):
    times, page = [], []
    import http.client

    for _ in range(repeat):
        t0 = time.perf_counter()
        fleet.overview(store.db)
        times.append(time.perf_counter() - t0)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        t0 = time.perf_counter()
        conn.request("GET", "/", headers={"Authorization": f"Bearer {token}"})
        resp = conn.getresponse()
        resp.read()
        page.append(time.perf_counter() - t0)
        assert resp.status == 200, resp.status
    parts = {}
    for name in ("builds", "withdrawn", "deferred", "failed", "release_chart"):
        t0 = time.perf_counter()
        getattr(fleet, name)(store.db)
        parts[name] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    fleet.not_seen(store.db, 7)
    parts["not_seen"] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    fleet.device_history(store.db, "dev1")
    one = time.perf_counter() - t0
    return {
        "fleet_queries_s": round(min(times), 3),
        "fleet_page_http_s": round(min(page), 3),
        "device_history_s": round(one, 4),
        "parts_s": parts,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--db",
        required=True,
        help="sqlite:///PATH, postgresql://URL, or postgresql-temp (a private cluster)",
    )
    ap.add_argument("--devices", type=int, default=2000, help="simulated devices (default 2000)")
    ap.add_argument("--seconds", type=float, default=10, help="measured seconds (default 10)")
    ap.add_argument("--warmup", type=float, default=2, help="unmeasured seconds first")
    ap.add_argument("--rate", type=float, default=0, help="offer this many reports/s (open loop)")
    ap.add_argument("--procs", type=int, default=2, help="client processes (default 2)")
    ap.add_argument("--conns", type=int, default=32, help="connections per process")
    ap.add_argument("--workers", type=int, default=1, help="server processes")
    ap.add_argument("--fleet", type=int, default=0, help="extra devices for the fleet timing")
    args = ap.parse_args()
    if args.devices > 100_000 or args.seconds > 600 or args.fleet > 1_000_000:
        raise SystemExit("bounded: at most 100,000 load devices, 600 s, 1,000,000 fleet devices")
    cluster = None
    if args.db == "postgresql-temp":  # a private cluster from Debian's postgresql package
        from pgcluster import Cluster

        cluster = Cluster({"shared_preload_libraries": "pg_stat_statements"})
        args.db = cluster.new_database()
        args.postmaster = int((cluster.data / "postmaster.pid").read_text().split()[0])
    try:
        print(json.dumps(_run(args), indent=2))
    finally:
        if cluster is not None:
            cluster.stop()


def _pg_counts(store) -> dict | None:
    """Statements (pg_stat_statements, when loaded) and commits so far, PostgreSQL only."""
    if store.db.dialect != "postgresql":
        return None
    out = {
        "commits": int(
            store.db.query(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
            )[0][0]
        )
    }
    with contextlib.suppress(Exception):  # not loaded (a server the bench did not start)
        out["statements"] = int(
            store.db.query("SELECT COALESCE(SUM(calls), 0) FROM pg_stat_statements")[0][0]
        )
    return out


def _pg_stats_setup(store) -> None:
    if store.db.dialect == "postgresql":
        try:
            with store.db.connect() as c:
                store.db.execute(c, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        except Exception:  # not in shared_preload_libraries: no statement counts
            pass


def _run(args) -> dict:
    store = open_store(args.db)
    token = store.new_admin_token()
    bulk_devices(store, 1, args.devices, reported=False)
    ids = [r[0] for r in store.db.query("SELECT id FROM devices ORDER BY id")][: args.devices]
    size0 = store.db.size_bytes()
    _pg_stats_setup(store)
    port = free_port()
    server = start_server(args.db, port, workers=args.workers)
    postmaster = getattr(args, "postmaster", None)
    try:
        pg0 = _pg_counts(store)
        cpu0 = cpu_seconds(server.pid, postmaster)
        out = {
            "db": store.db.dialect,
            "devices": args.devices,
            "workers": args.workers,
            "load": os.getloadavg(),
            **run_load(port, ids, args.procs, args.conns, args.seconds, args.warmup, args.rate),
        }
        cpu1 = cpu_seconds(server.pid, postmaster)
        pg1 = _pg_counts(store)
        total = out["all_reports"]
        cpu = {k: round((cpu1[k] - cpu0[k]) * 1000 / max(1, total), 3) for k in cpu0}
        cpu["client"] = round(out.pop("client_cpu_s") * 1000 / max(1, total), 3)
        out["cpu_ms_per_report"] = cpu
        if pg0 and pg1:  # includes the few queries of this script itself
            out["pg_per_report"] = {
                k: round((pg1[k] - pg0[k]) / max(1, total), 3) for k in pg1 if k in pg0
            }
        server_cpu = cpu["server"] + cpu.get("postgres", 0)
        # estimate: what 2 otherwise idle cores could sustain for server + database alone
        # (one server process is held to one core by the GIL)
        srv = cpu["server"] / max(1, min(2, args.workers))
        out["capacity_2_cores_per_s"] = (
            round(min(2000 / server_cpu, 1000 / srv)) if server_cpu else None
        )
        out["load_after"] = os.getloadavg()
        out.update(_health(port))
        stored = store.db.query("SELECT COUNT(*) FROM release_history")[0][0]
        out["history_rows"] = int(stored)
        out["db_bytes_per_device"] = round(store.db.size_bytes() / args.devices)
        out["db_bytes_start"] = size0
        if args.fleet:
            out.update(_fleet_timing(store, args, port, token))
    finally:
        server.terminate()
        server.wait(timeout=30)
        store.db.close()
    return out


def _health(port: int) -> dict:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/healthz")
    health = json.loads(conn.getresponse().read())
    return {
        "group_commit": {  # one worker's counters
            "batches": health["batches"],
            "reports": health["reports"],
            "mean_batch": round(health["reports"] / max(1, health["batches"]), 1),
        }
    }


def _fleet_timing(store, args, port: int, token: str) -> dict:
    bulk_devices(store, args.devices + 1, args.fleet, reported=True)
    store.withdraw("26.1 (b)")  # about a quarter of the fleet runs it
    with store.db.connect() as c:
        store.db.execute(c, "ANALYZE")
    return {
        "fleet_devices": args.devices + args.fleet,
        "db_bytes_per_device_fleet": round(store.db.size_bytes() / (args.devices + args.fleet)),
        **measure_fleet(store, port, token),
    }


if __name__ == "__main__":
    main()
