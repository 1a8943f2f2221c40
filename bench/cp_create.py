"""The control plane's work per create, counted rather than timed (issue 17, a cheaper create).

    sudo .venv/bin/python bench/cp_create.py [--n 20] [--burst 20] [--no-callgrind]
    sudo PYTHONPATH=/tmp/wt-old/src .venv/bin/python bench/cp_create.py   # another tree's CP

CPU time on this shared 2-core machine swings ±30 % between runs of the same code, more than the
changes it should judge; instructions and statements do not. The platform is bench/schedule.py's
(the embedded PostgreSQL, migrated; one uvicorn CP; three real agents, heartbeating once),
with the CP under ``valgrind --tool=callgrind`` (instrumentation switched on only once the
platform is up and warm). It prints:

  1. the statements a create sends to PostgreSQL (``log_statement = all`` while three creates run
     one at a time, between markers): how many, and which;
  2. the CP's instructions per create (callgrind's ``Ir``, every thread): --n creates one at a
     time, then a burst of --burst concurrent ones, raw and less the idle CP's rate over as long
     (its background loops; those this harness can slow down are slowed, see ``QUIET``), each
     measurement --reps times;
  3. the same for the API's cheapest authenticated request (GET of an unknown sandbox: HTTP,
     the API-key check, one statement), the floor under any request;
  4. the same for a unary exec of ``true`` (--n of them, one at a time, in one sandbox kept
     across the repetitions).

``--profile`` runs the CP without callgrind but with cProfile switched on around the same
windows (a ``sitecustomize`` hook: SIGUSR1 starts a profile, SIGUSR2 writes it): Python calls per
request (deterministic) and the profiler's own time by package and by function (not a timing
to quote: cProfile's overhead is per call, but it says where the calls are). ``--cpu N`` runs
the CP plain and reads ``/proc`` over N creates one at a time (and N floor requests, N unary
execs; each --reps times): the CP's CPU and PostgreSQL's (the postmaster and its backends) per
request, each less its idle rate: issue 17's "CP CPU per create, PostgreSQL included".

Run it against another tree with ``PYTHONPATH=<tree>/src``: the migrations and the CP are then
that tree's (the first line says which ``warren`` it imported).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import httpx  # noqa: E402

import warren  # noqa: E402
from bench.schedule import Conn, control_plane, cpu_seconds, setup  # noqa: E402
from warren import ids  # noqa: E402
from warren.cp.hosts.client_pool import HostClientPool  # noqa: E402
from warren.cp.security.ca import CertificateAuthority  # noqa: E402

# Background loops that would otherwise add their statements to every window: slowed (none of
# them is on the create path). Heartbeats are bench/schedule.py's 30 s.
QUIET = {
    "WARREN_LIFETIME_SWEEP_INTERVAL_S": "3600",
    "WARREN_REPLICA_LEASE_INTERVAL_S": "600",
    "WARREN_REPLICA_LEASE_TTL_S": "1200",
    # The HTTP protocol `warren cp` serves with (cp/connection_guard.py), not uvicorn's plain one.
    "UVICORN_HTTP": "warren.cp.connection_guard:GuardedHttpToolsProtocol",
}
# The agents beat once at start, then not again while this runs (the host monitor, which would
# mark them unreachable, runs hourly in bench/schedule.py's CP): no heartbeat lands in a window.
HEARTBEAT_S = "3600"
# The agents' addresses (port 50561): none the tests use (tests/integration/cp/hosts/
# test_multihost.py has bench/schedule.py's 127.0.0.2-.4), so this runs beside a test run.
AGENT_IPS = ("127.0.0.161", "127.0.0.162", "127.0.0.163")
_THREAD_IR = re.compile(r"^\s*Th\s+\d+\s+([\d,]+)", re.M)


def callgrind(pid: int, *args: str) -> str:
    out = subprocess.run(["callgrind_control", *args, str(pid)], capture_output=True, text=True, check=True)
    return out.stdout


def instructions(pid: int) -> int:
    """The CP's instructions since the last zero, all its threads."""
    counts = _THREAD_IR.findall(callgrind(pid, "-e", "Ir"))
    if not counts:
        raise RuntimeError("callgrind_control printed no Ir")
    return sum(int(c.replace(",", "")) for c in counts)


def dumped(pid: int, out: Path) -> tuple[int, int]:
    """The CP's instructions since the last zero and those of them in Python's cyclic garbage
    collector (``gc_collect_main``, inclusive), from a dump. A collection runs when enough
    objects were allocated since the last one, at whatever request that happens, and a full one
    walks the whole heap: one more or fewer in a window moves a per-request figure by ~10 %."""
    before = set(out.parent.glob(out.name + ".*"))
    callgrind(pid, "--dump")
    deadline = time.monotonic() + 60
    while not (new := set(out.parent.glob(out.name + ".*")) - before):
        if time.monotonic() > deadline:
            raise RuntimeError("callgrind wrote no dump")
        time.sleep(0.2)
    path = max(new, key=lambda p: p.stat().st_mtime)
    time.sleep(1)  # written by the CP's process: let it finish
    text = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", "--threshold=100", str(path)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    totals = re.search(r"^\s*([\d,]+)\s.*PROGRAM TOTALS", text, re.M)
    if totals is None:
        raise RuntimeError(f"no totals in {path}")
    gc_rows = re.findall(r"^\s*([\d,]+)\s.*gcmodule\.c:gc_collect_main\b(?!')", text, re.M)
    total, gc = int(totals.group(1).replace(",", "")), [int(m.replace(",", "")) for m in gc_rows]
    if BREAKDOWN is not None:
        BREAKDOWN.append(by_object(path))
    path.unlink()
    return total, max(gc, default=0)


# With --breakdown: each measurement's instructions by shared object (filled by ``dumped``).
BREAKDOWN: list[Counter[str]] | None = None
_SELF = re.compile(r"^\s*([\d,]+)\s+\([^)]*\)\s+(\S.*?)(?:\s+\[([^\]]+)\])?\s*$", re.M)


def by_object(path: Path) -> Counter[str]:
    """Self instructions per shared object (the interpreter, asyncpg, gRPC, pydantic-core, …)."""
    text = subprocess.run(
        ["callgrind_annotate", "--inclusive=no", "--threshold=100", str(path)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    out: Counter[str] = Counter()
    for ir, fn, obj in _SELF.findall(text.split("file:function", 1)[-1]):
        # Inlined code is shown without its object: CPython's headers are the interpreter's.
        where = fn.split(":", 1)[0]
        python = "/Python-3." in where
        name = Path(obj).name if obj else "libpython3.11" if python else where.rsplit("/", 1)[-1]
        out[re.sub(r"\.cpython-\d+.*|-[0-9a-f]{8}\.so.*|\.so.*", "", name)] += int(ir.replace(",", ""))
    return out


# The cheapest command: the unary exec path (sandbox lookup, ExecStream RPC, the answer, the
# detached last_active_at touch) with almost nothing of the guest's in it.
EXEC_BODY = b'{"cmd": "true"}'


async def create(c: Conn) -> str:
    status, _, data = await c.request("POST", "/v1/sandboxes", b'{"timeout_sec": 0}')
    if status != 201:
        raise RuntimeError(f"create -> {status}: {data[:300]!r}")
    return str(json.loads(data)["id"])


async def destroy_all(url: str, key: str, sids: list[str]) -> None:
    async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": key}, timeout=300) as http:
        for sid in sids:
            r = await http.delete(f"/v1/sandboxes/{sid}")
            r.raise_for_status()


def logged(text: str) -> list[str]:
    """The statements in a stretch of PostgreSQL's log (each from its ``LOG:`` line to the next
    line with a level: statements span lines), whitespace folded."""
    out = []
    for entry in re.split(r"\n[^\n]*?(?:LOG|DETAIL|ERROR|WARNING):  ", "\n" + text):
        m = re.match(r"\s*(?:execute [^:]*|statement): (.*)", entry, re.S)
        if m:
            out.append(" ".join(m.group(1).split()))
    return out


async def statements(url: str, key: str, pg_url: str, log: Path, n: int = 3) -> list[list[str]]:
    """The statements each of ``n`` creates sent, from PostgreSQL's own log."""
    db = await asyncpg.connect(pg_url)
    u = httpx.URL(url)
    c = Conn(u.host, u.port or 80, key)
    await c.open()
    per_create: list[list[str]] = []
    sids = []
    try:
        await db.execute("ALTER SYSTEM SET log_statement = 'all'")
        await db.execute("SELECT pg_reload_conf()")
        await asyncio.sleep(1)
        for i in range(n):
            start = log.stat().st_size
            await db.execute(f"SELECT 'bench-mark-{i}'")
            sids.append(await create(c))
            await db.execute(f"SELECT 'bench-mark-end-{i}'")
            await asyncio.sleep(0.5)  # the log is written by the backends themselves
            with open(log, "rb") as f:
                f.seek(start)
                text = f.read().decode(errors="replace")
            body = text.split(f"bench-mark-{i}'", 1)[1].split(f"bench-mark-end-{i}", 1)[0]
            # From the first entry after the opening marker to the closing marker's (left out).
            per_create.append(logged(body.split("LOG:  ", 1)[-1].rsplit("LOG:  ", 1)[0]))
    finally:
        await db.execute("ALTER SYSTEM RESET log_statement")
        await db.execute("SELECT pg_reload_conf()")
        await db.close()
        c.close()
    await destroy_all(url, key, sids)
    return per_create


async def counted(pid: int, work: object) -> tuple[int, float]:
    """Instructions (and wall seconds) the CP spent while ``work`` (an awaitable) ran."""
    callgrind(pid, "-z")
    t0 = time.perf_counter()
    await work  # type: ignore[misc]
    return instructions(pid), time.perf_counter() - t0


async def counted_gc(pid: int, out: Path, work: object) -> tuple[int, int, float]:
    """:func:`counted` from a dump: (instructions, those in the garbage collector, seconds)."""
    callgrind(pid, "-z")
    t0 = time.perf_counter()
    await work  # type: ignore[misc]
    dt = time.perf_counter() - t0
    total, gc = await asyncio.to_thread(dumped, pid, out)
    return total, gc, dt


async def measure(url: str, key: str, pid: int, out: Path, n: int, burst: int, reps: int) -> None:
    u = httpx.URL(url)
    conns = [Conn(u.host, u.port or 80, key) for _ in range(max(n, burst))]
    await asyncio.gather(*(c.open() for c in conns))
    sids: list[str] = []

    async def one_at_a_time() -> None:
        for _ in range(n):
            sids.append(await create(conns[0]))

    async def concurrent() -> None:
        sids.extend(await asyncio.gather(*(create(c) for c in conns[:burst])))

    missing = f"/v1/sandboxes/{ids.sandbox_id(uuid.UUID(int=1))}"

    async def floor() -> None:
        for _ in range(n):
            status, _, _ = await conns[0].request("GET", missing)
            assert status == 404, status

    # Warm-up at the burst's concurrency too: the database pool's extra connections opened and
    # their statements prepared, which a steady CP has done long before.
    for _ in range(2):
        await concurrent()
        await destroy_all(url, key, sids)
        sids.clear()
    idle, idle_dt = await counted(pid, asyncio.sleep(10))
    rate = idle / idle_dt
    print(f"idle CP: {rate / 1e6:.3f} M Ir/s (taken off below)")
    print(f"{'':34}{'n':>4}{'M Ir / request':>16}{'less idle':>11}{'in GC':>8}{'less both':>11}")
    target: list[str] = []

    async def execs() -> None:
        for _ in range(n):
            status, _, data = await conns[0].request("POST", f"/v1/sandboxes/{target[0]}/exec", EXEC_BODY)
            assert status == 200, (status, data[:300])

    for label, work, k in (
        ("create, one at a time", one_at_a_time, n),
        (f"create, {burst} concurrent", concurrent, burst),
        ("GET unknown sandbox (the floor)", floor, n),
        ("unary exec of `true`, one at a time", execs, n),
    ) * reps:
        if work is execs and not target:
            target.append(await create(conns[0]))  # kept (and its last_active_at) across reps
        ir, gc, dt = await counted_gc(pid, out, work())
        net = ir - rate * dt
        print(
            f"  {label:<32}{k:>4}{ir / k / 1e6:>16.3f}{net / k / 1e6:>11.3f}{gc / k / 1e6:>8.3f}"
            f"{(net - gc) / k / 1e6:>11.3f}"
        )
        if BREAKDOWN:
            top = BREAKDOWN[-1].most_common(12)
            print("    " + ", ".join(f"{name} {v / k / 1e6:.3f}" for name, v in top) + " (M Ir / request)")
        await destroy_all(url, key, sids)
        sids.clear()
    await destroy_all(url, key, target)
    for c in conns:
        c.close()


# --profile: installed in the CP's process through PYTHONPATH (Python imports ``sitecustomize``
# at start-up); the agents, started from this process's environment, never get the variable.
PROFILE_HOOK = """
import cProfile, os, signal
_state = {"p": None, "n": 0}
def _on(sig, frame):
    _state["p"] = cProfile.Profile()
    _state["p"].enable()
def _off(sig, frame):
    p = _state["p"]
    if p is not None:
        p.disable()
        _state["n"] += 1
        p.dump_stats(os.environ["WARREN_BENCH_PROFILE"] + "." + str(_state["n"]))
        _state["p"] = None
if os.environ.get("WARREN_BENCH_PROFILE"):
    signal.signal(signal.SIGUSR1, _on)
    signal.signal(signal.SIGUSR2, _off)
"""
_PACKAGES = (
    "warren", "fastapi", "starlette", "uvicorn", "sqlalchemy", "asyncpg", "grpc", "pydantic",
    "google", "anyio", "httptools", "uvloop", "asyncio", "greenlet", "json", "logging",
)  # fmt: skip


def _package(filename: str, fn: str) -> str:
    if filename == "~":
        return "builtins: " + (fn.split(" ")[-1].split(".")[0].strip("<>'") or "?")
    for part in ("warren/", "site-packages/", "python3.11/"):
        if part in filename:
            rest = filename.split(part, 1)[1]
            head = rest.split("/", 1)[0].removesuffix(".py")
            if part == "warren/":
                return "warren." + rest.rsplit(".", 1)[0].replace("/", ".")
            return head if head in _PACKAGES else ("stdlib" if part == "python3.11/" else head)
    return filename.rsplit("/", 1)[-1]


def profiled(path: Path, k: int, top: int = 25) -> None:
    """Calls per request and the profiler's time, by package and by function."""
    import pstats

    st = pstats.Stats(str(path))
    stats: dict[tuple[str, int, str], tuple[int, int, float, float, object]] = st.stats  # type: ignore[attr-defined]
    calls = sum(cc for cc, _, _, _, _ in stats.values())
    total = sum(tt for _, _, tt, _, _ in stats.values())
    print(f"    {calls / k:.0f} calls, {total / k * 1e3:.3f} ms of profiled time per request")
    by_pkg: defaultdict[str, float] = defaultdict(float)
    n_pkg: Counter[str] = Counter()
    for (fname, _, fn), (cc, _, tt, _, _) in stats.items():
        by_pkg[_package(fname, fn)] += tt
        n_pkg[_package(fname, fn)] += cc
    grouped: defaultdict[str, float] = defaultdict(float)
    for name, tt in by_pkg.items():
        grouped[name.split(".")[0] if not name.startswith("warren.") else ".".join(name.split(".")[:3])] += tt
    print("    by package (ms / request, calls): " + ", ".join(
        f"{name} {tt / k * 1e3:.3f}" for name, tt in sorted(grouped.items(), key=lambda kv: -kv[1])[:16]
    ))  # fmt: skip
    rows = sorted(stats.items(), key=lambda kv: -kv[1][2])[:top]
    for (fname, line, fn), (cc, _, tt, ct, _) in rows:
        where = f"{_package(fname, fn)}:{line}:{fn}"
        per = f"{tt / k * 1e6:8.1f} us self {ct / k * 1e6:8.1f} us cum {cc / k:6.1f} calls"
        print(f"      {per}  {where[:100]}")


async def profile_windows(url: str, key: str, pid: int, out: Path, n: int, keep: Path | None) -> None:
    """cProfile around --n creates one at a time, then --n floor requests (the profiles copied
    to ``keep``, for pstats)."""
    u = httpx.URL(url)
    c = Conn(u.host, u.port or 80, key)
    await c.open()
    missing = f"/v1/sandboxes/{ids.sandbox_id(uuid.UUID(int=1))}"
    target = await create(c)
    windows = ("create, one at a time", "GET unknown sandbox (the floor)", "unary exec of `true`")
    for i, label in enumerate(windows, 1):
        sids: list[str] = []
        os.kill(pid, signal.SIGUSR1)
        await asyncio.sleep(0.2)
        for _ in range(n):
            if i == 1:
                sids.append(await create(c))
            elif i == 2:
                status, _, _ = await c.request("GET", missing)
                assert status == 404, status
            else:
                status, _, data = await c.request("POST", f"/v1/sandboxes/{target}/exec", EXEC_BODY)
                assert status == 200, (status, data[:300])
        await asyncio.sleep(0.2)  # the exec's detached touch
        os.kill(pid, signal.SIGUSR2)
        done = Path(f"{out}.{i}")
        deadline = time.monotonic() + 60
        while not done.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)
        print(f"  {label} (n={n}):")
        profiled(done, n)
        if keep is not None:
            shutil.copy(done, keep / done.name)
        await destroy_all(url, key, sids)
    await destroy_all(url, key, [target])
    c.close()


def pg_seconds(postmaster: int) -> float:
    """CPU seconds of the embedded PostgreSQL: the postmaster and its live backends."""
    kids = Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()
    total = 0
    for p in [postmaster, *map(int, kids)]:
        try:
            f = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(f[11]) + int(f[12])
    return total / os.sysconf("SC_CLK_TCK")


async def cpu_windows(url: str, key: str, pid: int, pg_pid: int, n: int, reps: int) -> None:
    """The CP's and PostgreSQL's CPU over n creates one at a time, n floor requests and n unary
    execs (in one sandbox), from /proc, each less its idle rate (10 s measured first); ``reps``
    times over."""
    u = httpx.URL(url)
    c = Conn(u.host, u.port or 80, key)
    await c.open()
    missing = f"/v1/sandboxes/{ids.sandbox_id(uuid.UUID(int=1))}"
    target = await create(c)
    c0, p0, t0 = cpu_seconds(pid), pg_seconds(pg_pid), time.perf_counter()
    await asyncio.sleep(10)
    dt = time.perf_counter() - t0
    idle_cp, idle_pg = (cpu_seconds(pid) - c0) / dt, (pg_seconds(pg_pid) - p0) / dt
    print(f"idle: CP {idle_cp * 1e3:.2f} ms/s, PostgreSQL {idle_pg * 1e3:.2f} ms/s (taken off below)")
    windows = (
        ("create, one at a time", "create"),
        ("GET unknown sandbox (the floor)", "floor"),
        ("unary exec of `true`", "exec"),
    ) * reps
    for label, kind in windows:
        sids: list[str] = []
        c0, p0, t0 = cpu_seconds(pid), pg_seconds(pg_pid), time.perf_counter()
        for _ in range(n):
            if kind == "create":
                sids.append(await create(c))
            elif kind == "floor":
                status, _, _ = await c.request("GET", missing)
                assert status == 404, status
            else:
                status, _, data = await c.request("POST", f"/v1/sandboxes/{target}/exec", EXEC_BODY)
                assert status == 200, (status, data[:300])
        dt = time.perf_counter() - t0
        cp = cpu_seconds(pid) - c0 - idle_cp * dt
        pg = pg_seconds(pg_pid) - p0 - idle_pg * dt
        print(
            f"  {label:<32} n={n}: CP {cp / n * 1e3:.3f} ms + PostgreSQL {pg / n * 1e3:.3f} ms of CPU per "
            f"request (wall {dt / n * 1e3:.2f} ms each)"
        )
        await destroy_all(url, key, sids)
    await destroy_all(url, key, [target])
    c.close()


async def seed_ended(pg_url: str, team: str, n: int) -> None:
    """``n`` ended (``stopped``) sandbox rows of the team, spread over the hosts: the history the
    retention pass keeps for seven days, which a create's usage sums must not read."""
    db = await asyncpg.connect(pg_url)
    try:
        hosts = [r["id"] for r in await db.fetch("SELECT id FROM hosts")]
        await db.execute(
            """
            INSERT INTO sandboxes (id, team_id, host_id, template, status, vcpus, memory_mb,
                                   timeout_sec, disk_size_mb, internet, created_at, last_updated)
            SELECT gen_random_uuid(), $1, ($2::uuid[])[1 + g % cardinality($2::uuid[])], 'minimal',
                   'stopped', 1, 512, 0, 5120, true, now(), now()
            FROM generate_series(1, $3) g
            """,
            ids.parse_id(ids.Kind.TEAM, team, what="team"), hosts, n,
        )  # fmt: skip
        await db.execute("ANALYZE sandboxes")
    finally:
        await db.close()
    print(f"seeded {n} ended sandbox rows of the team")


async def main_async(args: argparse.Namespace) -> None:
    os.environ.update(QUIET)
    with tempfile.TemporaryDirectory(prefix="warren-bench-cpcreate-", ignore_cleanup_errors=True) as d:
        home = Path(d)
        os.chmod(home, 0o755)
        use_callgrind = args.callgrind and not args.profile and not args.cpu
        prefix = (
            ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={home}/cg.out"]
            if use_callgrind
            else []
        )
        cp_env: dict[str, str] = {}
        if args.profile:
            (home / "hook").mkdir()
            (home / "hook" / "sitecustomize.py").write_text(PROFILE_HOOK)
            path = os.environ.get("PYTHONPATH", "")
            cp_env = {"PYTHONPATH": f"{home / 'hook'}:{path}", "WARREN_BENCH_PROFILE": str(home / "prof")}
        saved = dict(os.environ)
        os.environ.update(cp_env)  # for the CP's process only: restored before the agents start
        with control_plane(home, prefix=prefix, start_timeout_s=600) as (url, pg_url, pid):
            os.environ.clear()
            os.environ.update(saved)
            key, agents, team = await setup(
                url, pg_url, home / "agents", None, heartbeat_s=HEARTBEAT_S, ips=AGENT_IPS
            )
            pool = HostClientPool(CertificateAuthority.load_or_create(home / "ca"))
            try:
                if args.seed_ended:
                    await seed_ended(pg_url, team, args.seed_ended)
                # Warm up: the CP's caches, its database pool, its channels to the agents.
                u = httpx.URL(url)
                c = Conn(u.host, u.port or 80, key)
                await c.open()
                await destroy_all(url, key, [await create(c) for _ in range(6)])
                c.close()
                log = next(home.rglob("postgres.log"))
                per_create = await statements(url, key, pg_url, log)
                counts = [len(s) for s in per_create]
                print(f"statements per create (3 creates, one at a time): {counts}")
                for text, k in Counter(s for st in per_create for s in st).items():
                    print(f"  {k}x {' '.join(text.split())[:150]}")
                if args.profile:
                    await profile_windows(url, key, pid, home / "prof", args.n, args.keep_profile)
                elif args.cpu:
                    pg_pid = int(next(home.rglob("postmaster.pid")).read_text().split()[0])
                    await cpu_windows(url, key, pid, pg_pid, args.cpu, args.reps)
                elif use_callgrind:
                    callgrind(pid, "-i", "on")
                    await measure(url, key, pid, home / "cg.out", args.n, args.burst, args.reps)
            finally:
                # A failed run must not leave sandboxes behind (a stopped agent leaves them running).
                await asyncio.gather(*(a.destroy_all_over(pool) for a in agents))
                await pool.close()
                await asyncio.gather(*(a.astop() for a in agents))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20, help="creates one at a time (and floor requests)")
    ap.add_argument("--burst", type=int, default=20, help="concurrent creates")
    ap.add_argument("--reps", type=int, default=2, help="each measurement this many times")
    ap.add_argument("--breakdown", action="store_true", help="instructions by shared object too")
    ap.add_argument("--no-callgrind", dest="callgrind", action="store_false", help="statements only")
    ap.add_argument("--profile", action="store_true", help="cProfile the CP over --n creates instead")
    ap.add_argument("--seed-ended", type=int, default=0, help="the team's ended rows to add first")
    ap.add_argument("--keep-profile", type=Path, help="with --profile: copy the profiles to this directory")
    ap.add_argument("--cpu", type=int, default=0, help="CPU from /proc over this many creates instead")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/cp_create.py runs real agents: run it as root")
    print(f"warren from {Path(warren.__file__).parent}")
    if args.breakdown:
        global BREAKDOWN
        BREAKDOWN = []
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
