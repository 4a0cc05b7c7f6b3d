"""Markdown for BENCHMARKS.md from evindex bench (f32, f16) and ann_peers.py JSON files, then
each goal of issue 21 with its figure and whether this run meets it."""
import json
import math
import sys


def qps_at(curve, target):
    """QPS at a recall target, interpolated (log QPS, linear recall) between measured ef points."""
    pts = sorted((c["recall"], c["qps"]) for c in curve)
    for (r0, q0), (r1, q1) in zip(pts, pts[1:]):
        if r0 <= target <= r1:
            t = 0 if r1 == r0 else (target - r0) / (r1 - r0)
            return math.exp(math.log(q0) + t * (math.log(q1) - math.log(q0)))
    return None


def main():
    name = sys.argv[1]
    f32, f16, peers = [None if p == "-" else json.load(open(p)) for p in sys.argv[2:5]]
    baseline = json.load(open(sys.argv[5])) if len(sys.argv) > 5 and sys.argv[5] != "-" else None
    print(f"#### {name}: {f32['n']:,} × {f32['dim']}-d, M 16, efConstruction 200, k 10\n")
    print("| ef | echovault recall@10 | echovault QPS | hnswlib recall@10 | hnswlib QPS | faiss recall@10 | faiss QPS |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for e, h, f in zip(f32["search"], peers["hnswlib"]["search"], peers["faiss"]["search"]):
        print(f"| {e['ef']} | {e['recall']:.4f} | {e['qps']:.0f} | {h['recall']:.4f} | {h['qps']:.0f} | {f['recall']:.4f} | {f['qps']:.0f} |")
    print()
    for target in (0.95, 0.90):
        ours = qps_at(f32["search"], target)
        for peer in ("hnswlib", "faiss"):
            theirs = qps_at(peers[peer]["search"], target)
            ratio = f"{ours / theirs:.2f}×" if ours and theirs else f"n/a ({target} not bracketed)"
            bold = "**" if target == 0.95 else ""
            print(f"- QPS at recall@10 = {target}, echovault / {peer}: {bold}{ratio}{bold}")
    reused = " (build of an earlier run; this run reused its index)" if f32.get("build_reused") else ""
    for peer in ("hnswlib", "faiss"):
        if "build_s" in f32:
            print(f"- build: echovault {f32['build_s']:.1f} s{reused} (RocksDB writes included) vs {peer} {peers[peer]['build_s']:.1f} s → {peers[peer]['build_s'] / f32['build_s']:.2f}× their speed")
    if "open_rebuild_s" in f32:
        print(f"- open: snapshot load {f32['open_snapshot_s']:.2f} s vs forced rebuild {f32['open_rebuild_s']:.2f} s → **{f32['open_rebuild_s'] / f32['open_snapshot_s']:.1f}× faster**")
    f16_part = f", f16 {f16['bytes_per_vector']:.0f} B (f16 recall@10 at ef {f16['search'][0]['ef']}: {f16['search'][0]['recall']:.4f})" if f16 else ""
    print(f"- bytes per vector on disk, graph included: f32 {f32['bytes_per_vector']:.0f} B{f16_part}")
    if "filters" in f32:
        print("\n| filter selectivity | candidates | plain filtered walk (ef 96) recall@10 | its ms | exact ms | `search` recall@10 | `search` ms |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for r in f32["filters"]:
            print(
                f"| {100 * r['selectivity']:.2f} % | {r['candidates']:,} | {r['graph_recall']:.3f} | {r['graph_ms']:.2f} | {r['exact_ms']:.2f} "
                f"| {r['search_recall']:.3f} | {r['search_ms']:.2f} |"
            )
    goals(f32, f16, peers, baseline)


def secs(t):
    return f"{t * 1000:.1f} ms" if t < 1 else f"{t:.2f} s"


def goals(f32, f16, peers, baseline=None):
    """Issue 21's goals as measured in this run (figures absent from the JSON are n/a);
    `baseline`: an earlier run's echovault-f32.json for the recall-per-ef goal."""
    rows = []

    def row(goal, figure, ok):
        rows.append((goal, figure, "n/a" if ok is None else ("yes" if ok else "**no**")))

    h = peers["hnswlib"]
    if "build_s" in f32:
        r = h["build_s"] / f32["build_s"]
        reused = " (reused index)" if f32.get("build_reused") else ""
        row("build throughput ≥ 0.5× hnswlib (M 16, efC 200, all cores)", f"{r:.2f}× ({f32['build_s']:.1f} s vs {h['build_s']:.1f} s){reused}", r >= 0.5)
    for name, p in (("warm", f32.get("probe_warm")), ("cold", f32.get("probe_cold"))):
        if p:
            t = p["open_to_first_search_s"]
            # The 2 s goal is set for 1M × 512-d; a smaller set's open says little about it.
            at_scale = f32["n"] >= 1_000_000 and name == "warm"
            peer = ""
            if name == "warm" and "open_s" in h:
                peer = f"; hnswlib load + first query {secs(h['open_s'])} → {h['open_s'] / t:.2f}× its speed"
            row(f"open to first search < 2 s at 1M ({name} page cache)", f"{secs(t)} (open {secs(p['open_s'])}) at {f32['n']:,}{peer}", t < 2.0 if at_scale else None)
            row(f"first insert after an open < 5 s ({name})", secs(p["first_insert_s"]), p["first_insert_s"] < 5.0)
    cold = f32.get("cold_caches")
    if cold and not cold.get("allowed"):
        row("cold-cache figures", f"not measured: dropping the page cache was refused ({cold.get('why')})", None)
    if f32.get("probe_warm"):
        b = f32["probe_warm"]["rss_bytes_per_vector"]
        peak = f32["probe_warm"]["rss_peak"] - f32["probe_warm"]["rss_before_open"]
        anon = f32["probe_warm"].get("rss_anon_after_search")
        anon = f", anonymous {anon / 2**20:.0f} MiB" if anon else ""
        figure = f"{b:.0f} B (VmRSS after open + search − before open; peak {peak / f32['probe_warm']['vectors']:.0f} B{anon})"
        row("resident bytes per f32 vector ≤ 2.6 KB (512-d)", figure, b <= 2600 if f32["dim"] == 512 else None)
    if f16 and f16.get("probe_warm"):
        b = f16["probe_warm"]["rss_bytes_per_vector"]
        row("resident bytes per f16 vector ≤ 1.5 KB (512-d)", f"{b:.0f} B", b <= 1500 if f16["dim"] == 512 else None)
    par = f32.get("parallel")
    if par:
        peer = h.get("parallel")
        theirs = f"; hnswlib {peer['ratio']:.2f}× ({peer['qps_1']:.0f} → {peer['qps_2']:.0f})" if peer else ""
        row(f"search QPS on 2 threads ≥ 1.8× one thread (ef {par['ef']})", f"{par['ratio']:.2f}× ({par['qps_1']:.0f} → {par['qps_2']:.0f} QPS){theirs}", par["ratio"] >= 1.8)
    if baseline:
        old = {c["ef"]: c["recall"] for c in baseline["search"]}
        pairs = [(c["ef"], c["recall"], old[c["ef"]]) for c in f32["search"] if c["ef"] in old]
        worst = min((r - o for _, r, o in pairs), default=None)
        figure = ", ".join(f"ef {e}: {r:.4f} vs {o:.4f}" for e, r, o in pairs)
        row("recall@10 per ef no worse than the baseline run (ANN_BASELINE)", figure or "no common ef", None if worst is None else worst >= -0.005)
    if rows:
        print("\n| goal (issue 21) | this run | met |")
        print("|---|---|:-:|")
        for g, f, ok in rows:
            print(f"| {g} | {f} | {ok} |")


if __name__ == "__main__":
    main()
