"""Metadata overhead of one agent check: bytes downloaded and CPU time.

Builds a TUF repository with one release (two small components), serves it over HTTP on
127.0.0.1 and measures, on a fresh device, (1) a run that installs the release and
(2) a run with nothing new, several times each; prints medians. Run:
``python bench/trust_overhead.py [--repeat 7] [--releases 1]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from httpserver import serve
from tufworld import NOW, device, images, new_repo, publish

from bsipatch.agent.executor import Agent


def _stock(srv: Any, repo: Path, root: Path, trusted: bytes) -> tuple[int, int, float, int]:
    """The peer: python-tuf's own Updater refreshing the same repository (warm cache)."""
    from tuf.ngclient import Updater

    meta = root / "stock-meta"
    meta.mkdir(exist_ok=True)

    def updater() -> Updater:
        return Updater(str(meta), srv.url + "metadata/", str(root), srv.url + "targets/",
                       bootstrap=trusted)  # fmt: skip

    updater().refresh()  # first refresh fills the cache (like the device's earlier checks)
    srv.log.clear()
    c0 = time.process_time()
    updater().refresh()
    cpu = time.process_time() - c0
    got = sum((repo / e.path.lstrip("/")).stat().st_size for e in srv.log if e.status == 200)
    return got, 0, cpu, len(srv.log)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--releases", type=int, default=1, help="releases already published")
    args = ap.parse_args()
    rows: dict[str, list[tuple[int, int, float, int]]] = {"install": [], "nothing new": []}
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory() as d:
            root = Path(d)
            imgs = images(root, seed=i)
            repo, keys = new_repo(root)
            for n in range(args.releases - 1):  # older releases already published
                publish(repo, keys, imgs, "abcdefghijklmnop"[n], "a", minutes=n)
            pb = device(root, imgs)
            trusted = (repo / "metadata" / "1.root.json").read_bytes()
            with serve(repo) as srv:
                Agent(pb, srv.url, now=NOW + timedelta(minutes=30), trusted_root=trusted).check()
                letter = "abcdefghijklmnop"[args.releases - 1]
                publish(repo, keys, imgs, letter, "b" if args.releases > 1 else "a", minutes=20)
                for label in ("install", "nothing new"):
                    agent = Agent(pb, srv.url, now=NOW + timedelta(minutes=30))
                    c0 = time.process_time()
                    agent.run()
                    cpu = time.process_time() - c0
                    files = agent.repo.stats.files
                    meta = sum(n for p, n in files.items() if p.startswith("metadata/"))
                    pat = sum(n for p, n in files.items() if p.startswith("targets/"))
                    rows[label].append((meta, pat, cpu, agent.repo.stats.requests))
                rows.setdefault("stock Updater, nothing new", []).append(
                    _stock(srv, repo, root, trusted)
                )
    for label, vals in rows.items():
        meta = statistics.median(v[0] for v in vals)
        pat = statistics.median(v[1] for v in vals)
        cpu = statistics.median(v[2] for v in vals)
        req = statistics.median(v[3] for v in vals)
        print(
            f"{label:12} metadata {meta:8.0f} B   patches {pat:8.0f} B   CPU {cpu * 1000:7.1f} ms"
            f"   requests {req:.0f}   (median of {len(vals)}; {args.releases} release(s))"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
