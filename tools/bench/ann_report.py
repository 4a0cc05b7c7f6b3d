"""Markdown for BENCHMARKS.md from evindex bench (f32, f16) and ann_peers.py JSON files."""
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


if __name__ == "__main__":
    main()
