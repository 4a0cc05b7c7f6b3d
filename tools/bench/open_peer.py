"""Issue 21's open goal against a peer (tools/bench-open).

  open_peer.py build BASE.npy OUT.bin          hnswlib graph of BASE (M 16, efC 200, ip), saved
  open_peer.py compare --evindex BIN --index DIR --peer OUT.bin --queries Q.npy [--runs 5] [--cold]

`compare` alternates fresh processes: `evindex probe --open-only` (open the index, answer one
search; adds nothing to the index) and a Python process loading the hnswlib graph and answering one query
(ann_peers.OPEN). Before each, a throwaway process touches and frees 3 GiB: on this VM memory the
guest has not touched for a while is slow to fault in (a first 2 GiB touch has taken 10 s, a
second 0.5 s), which would otherwise favour whichever runs second. With `--cold` the page cache is
dropped before each run too (`sync; echo 3 > /proc/sys/vm/drop_caches`, root only: refused
otherwise), so both read their files from the disk. Prints one JSON object with
every run, the medians and their ratio (peer seconds / ours: above 1 means we open faster)."""
import argparse
import json
import statistics
import subprocess
import sys
import time

import numpy as np

from ann_peers import OPEN


def settle():
    subprocess.run([sys.executable, "-c", "import numpy as np; np.ones(3 << 28, dtype=np.float32)"], check=True)


def drop_caches():
    subprocess.run(["sync"], check=True)
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3")
    except OSError as e:
        sys.exit(f"open_peer.py: --cold needs to drop the page cache, which was refused: {e}")


def main():
    if sys.argv[1:2] == ["build"]:
        import hnswlib

        base = np.load(sys.argv[2]).astype(np.float32)
        idx = hnswlib.Index(space="ip", dim=base.shape[1])
        idx.init_index(max_elements=len(base), ef_construction=200, M=16, random_seed=100)
        t0 = time.perf_counter()
        idx.add_items(base, np.arange(len(base)))
        print(f"[open_peer] hnswlib built {len(base):,} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        idx.save_index(sys.argv[3])
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["compare"])
    ap.add_argument("--evindex", required=True)
    ap.add_argument("--index", required=True)
    ap.add_argument("--peer", required=True)
    ap.add_argument("--queries", required=True)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--cold", action="store_true", help="drop the page cache before each run")
    a = ap.parse_args()

    def before():
        settle()
        if a.cold:
            drop_caches()

    ours, peer, phases = [], [], []
    for _ in range(a.runs):
        before()
        o = subprocess.run([a.evindex, "probe", "--open-only", "--dir", a.index, "--queries", a.queries], check=True, capture_output=True, text=True)
        d = json.loads(o.stdout)
        ours.append(d["open_to_first_search_s"])
        phases.append({"peak_rss": d["rss_peak"], "loads": d["open_how"]})
        before()
        p = subprocess.run([sys.executable, "-c", OPEN["hnswlib"], a.peer, a.queries], check=True, capture_output=True, text=True)
        peer.append(float(p.stdout))
    mo, mp = statistics.median(ours), statistics.median(peer)
    print(json.dumps({"ours_s": ours, "hnswlib_s": peer, "ours_median_s": mo, "hnswlib_median_s": mp, "ratio": mp / mo, "cache": "cold" if a.cold else "warm", "runs": phases}))
    print(f"[open_peer] open to first search ({'cold' if a.cold else 'warm'} page cache): echovault median {mo:.2f} s, hnswlib load + query {mp:.2f} s → {mp / mo:.2f}× its speed", file=sys.stderr)


if __name__ == "__main__":
    main()
