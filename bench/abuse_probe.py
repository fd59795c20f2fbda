"""Probes of issue 14's defects 11-13 against a real `wearfed cloud serve`: a flood of unauthenticated requests, a
200 MB chunked body, and out-of-range integers in every path and query. The same probes run against any checkout, so
the before/after figures come from one script (the tests in tests/attacks/ assert the new behaviour with them).

Prints one line per probe, e.g. ``flood: requests=2000 statuses={401: 20, 429: 1980} events_added=3 ...``.

Usage: ``python -m bench.abuse_probe [--cloud-pythonpath DIR] [--flood 2000] [--upload-mb 200]``; DIR is the checkout
whose cloud is probed (default: this one). Traffic goes to loopback only (the attacker from 127.0.0.2).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx

ADMIN_TOKEN = "probe-admin-token"
BIG = ("99999999999999999999", str(2**31), str(2**63))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Sampler:
    """Sample `fn` every `every_s` in a thread until stopped; keeps the values."""

    def __init__(self, fn: Callable[[], float], every_s: float = 0.05) -> None:
        self.fn, self.every_s, self.values = fn, every_s, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):  # a failed sample is a missing sample
                self.values.append(self.fn())
            self._stop.wait(self.every_s)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


def latency_ms(client: httpx.Client, path: str) -> float:
    t = time.perf_counter()
    client.get(path)
    return (time.perf_counter() - t) * 1000


def flood(url: str, n: int, *, local_address: str = "127.0.0.2", max_s: float = 60.0) -> Counter:
    """`n` requests with a forged bearer token from `local_address` (stops after `max_s`): statuses seen."""
    statuses: Counter = Counter()
    transport = httpx.HTTPTransport(local_address=local_address)
    deadline = time.monotonic() + max_s
    with httpx.Client(base_url=url, transport=transport, timeout=30) as http:
        for _ in range(n):
            if time.monotonic() > deadline:
                break
            statuses[http.get("/v1/participants", headers={"Authorization": "Bearer wf_forged"}).status_code] += 1
    return statuses


def chunked_upload(url: str, path: str, total_bytes: int, *, chunk: int = 64 * 1024) -> dict:
    """POST `total_bytes` with chunked transfer encoding and no Content-Length over a raw socket; stops sending once
    the server answers. Returns the status and how many body bytes had been sent when the answer came."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=120)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                 "Transfer-Encoding: chunked\r\n\r\n".encode())
    piece = f"{chunk:x}\r\n".encode() + b"x" * chunk + b"\r\n"
    sent, answer = 0, b""
    try:
        while sent < total_bytes:
            if select.select([sock], [], [], 0)[0]:
                answer = sock.recv(65536)
                break
            sock.sendall(piece)
            sent += chunk
        else:
            sock.sendall(b"0\r\n\r\n")
        while b"\r\n" not in answer:
            more = sock.recv(65536)
            if not more:
                break
            answer += more
    except OSError as exc:  # the server closed on us
        answer = answer or f"closed: {exc}".encode()
    finally:
        sock.close()
    line = answer.split(b"\r\n", 1)[0].decode(errors="replace")
    status = int(line.split()[1]) if line.startswith("HTTP/") else 0
    return {"status": status, "sent_mb_at_answer": round(sent / 2**20, 1), "answered_early": sent < total_bytes}


def declared_too_large(url: str, path: str, length: int) -> int:
    """A request that declares a huge Content-Length and sends nothing: the status, if answered within 10 s."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {length}\r\n\r\n".encode())
        try:
            line = sock.recv(65536).split(b"\r\n", 1)[0].decode()
        except TimeoutError:
            return 0
    return int(line.split()[1]) if line.startswith("HTTP/") else 0


def big_integers(url: str, headers: dict) -> dict[str, list[str]]:
    """Every operation with an integer path or query parameter, called with values past SQLite's and PostgreSQL's
    integer range: operation -> statuses."""
    spec = httpx.get(f"{url}/openapi.json", timeout=30).json()
    out: dict[str, list[str]] = {}
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            params = [p for p in op.get("parameters", []) if p.get("schema", {}).get("type") == "integer"]
            if not params:
                continue
            seen = []
            for value in BIG:
                concrete, query = path, {}
                for p in op.get("parameters", []):
                    v = value if p in params else "gw-1"
                    if p["in"] == "path":
                        concrete = concrete.replace("{" + p["name"] + "}", v)
                    elif p in params:
                        query[p["name"]] = v
                resp = httpx.request(method.upper(), url + concrete, params=query, headers=headers, timeout=30,
                                     json={} if method in ("post", "put") else None)
                seen.append(str(resp.status_code))
            out[f"{method.upper()} {path}"] = seen
    return out


def events(db: Path) -> tuple[int, int]:
    """Audit entries, and bytes of the database with its write-ahead log."""
    with sqlite3.connect(db) as conn:
        n = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    return n, sum(p.stat().st_size for p in (db, db.with_name(db.name + "-wal")) if p.exists())


def serve(checkout: Path, state: Path, db: Path, port: int, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(checkout), "WEARFED_ADMIN_TOKEN": ADMIN_TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "federation.cli", "cloud", "serve", "--port", str(port), "--db",
                             f"sqlite:///{db}", "--state-dir", str(state), "--dev-insecure-custodian", "--log-level",
                             "warning", *extra], env=env, cwd=checkout, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("cloud did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cloud-pythonpath", type=Path, default=Path(__file__).resolve().parents[1])
    ap.add_argument("--flood", type=int, default=2000)
    ap.add_argument("--upload-mb", type=int, default=200)
    args = ap.parse_args()
    from sim.broker import free_port

    tmp = Path(tempfile.mkdtemp(prefix="abuse-probe-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = serve(args.cloud_pythonpath, tmp / "state", tmp / "cloud.db", port)
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    staff = httpx.Client(base_url=url, headers=admin, timeout=30)
    public = httpx.Client(base_url=url, timeout=30)
    try:
        time.sleep(2)
        quiet = [latency_ms(staff, "/v1/whoami") for _ in range(20)]
        n0, size0 = events(tmp / "cloud.db")
        with Sampler(lambda: latency_ms(staff, "/v1/whoami"), 0.05) as during:
            t = time.perf_counter()
            statuses = flood(url, args.flood)
            flood_s = time.perf_counter() - t
        time.sleep(3)
        n1, size1 = events(tmp / "cloud.db")
        print(f"flood: requests={sum(statuses.values())} seconds={flood_s:.1f} statuses={dict(statuses)} "
              f"events_added={n1 - n0} db_growth_kb={(size1 - size0) / 1024:.0f} admin_ms_quiet_median="
              f"{statistics.median(quiet):.1f} admin_ms_flood_median={statistics.median(during.values):.1f} "
              f"admin_ms_flood_max={max(during.values):.1f}", flush=True)

        base = rss_mb(proc.pid)
        with Sampler(lambda: rss_mb(proc.pid), 0.05) as rss, \
                Sampler(lambda: latency_ms(public, "/healthz"), 0.1) as health:
            up = chunked_upload(url, "/v1/drift/reports", args.upload_mb * 2**20)
        print(f"chunked_drift: upload_mb={args.upload_mb} status={up['status']} sent_mb_at_answer="
              f"{up['sent_mb_at_answer']} rss_base_mb={base:.0f} rss_peak_mb={max(rss.values):.0f} "
              f"healthz_ms_max={max(health.values):.0f}", flush=True)
        sub = chunked_upload(url, "/v1/rounds/1/updates", (args.upload_mb + 8) * 2**20)
        print(f"chunked_submit: status={sub['status']} sent_mb_at_answer={sub['sent_mb_at_answer']}", flush=True)
        print(f"declared_200mb: status={declared_too_large(url, '/v1/drift/reports', 200 * 2**20)}", flush=True)
        ints = big_integers(url, admin)
        failing = sorted(op for op, st in ints.items() if "500" in st)
        print(f"big_integers: operations={len(ints)} with_500={len(failing)} statuses="
              f"{dict(Counter(s for st in ints.values() for s in st))} failing={failing}", flush=True)
    finally:
        staff.close()
        public.close()
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
