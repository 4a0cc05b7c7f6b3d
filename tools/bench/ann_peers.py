"""hnswlib and faiss-cpu HNSW on the same files as `evindex bench`, same M / efConstruction,
inner product on unit vectors; build with all cores, search single-threaded.
Prints one JSON object: {"hnswlib": {...}, "faiss": {...}} with build_s and a recall/QPS curve;
hnswlib also "threads": QPS at --qps-ef on 1 and 2 search threads and their ratio (what this
machine's two cores give a peer, beside echovault's own ratio). With --save-dir, each peer's
index is saved there and "open_s" is the median of 3 fresh processes loading it and answering
one query (the peer of `evindex probe`'s open to first search). --only hnswlib skips faiss."""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np


def recall(found, truth, k):
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth)]))


# A fresh process: load the saved index, answer one query, print the seconds both took.
OPEN = {
    "hnswlib": """
import sys, time, numpy as np, hnswlib
q = np.load(sys.argv[2])[:1].astype(np.float32)
t0 = time.perf_counter()
idx = hnswlib.Index(space="ip", dim=q.shape[1])
idx.load_index(sys.argv[1])
idx.set_ef(64)
idx.knn_query(q, k=10, num_threads=1)
print(time.perf_counter() - t0)
""",
    "faiss": """
import sys, time, numpy as np, faiss
q = np.load(sys.argv[2])[:1].astype(np.float32)
t0 = time.perf_counter()
fx = faiss.read_index(sys.argv[1])
fx.hnsw.efSearch = 64
fx.search(q, 10)
print(time.perf_counter() - t0)
""",
}


def open_seconds(peer, path, queries):
    """Median of 3 fresh processes' load + first query of the index saved at `path`."""
    runs = [float(subprocess.run([sys.executable, "-c", OPEN[peer], path, queries], check=True, capture_output=True, text=True).stdout) for _ in range(3)]
    os.remove(path)
    return statistics.median(runs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--queries", required=True)
    ap.add_argument("--truth", required=True)
    ap.add_argument("--ef", default="16,32,64,128,256")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--M", type=int, default=16)
    ap.add_argument("--efc", type=int, default=200)
    ap.add_argument("--qps-ef", type=int, default=64)
    ap.add_argument("--save-dir")
    ap.add_argument("--only", choices=["hnswlib"])
    a = ap.parse_args()
    base = np.load(a.base).astype(np.float32)
    queries = np.load(a.queries).astype(np.float32)
    truth = np.load(a.truth)
    efs = [int(e) for e in a.ef.split(",")]
    threads = os.cpu_count()
    out = {}

    import hnswlib

    idx = hnswlib.Index(space="ip", dim=base.shape[1])
    idx.init_index(max_elements=len(base), ef_construction=a.efc, M=a.M, random_seed=100)
    t0 = time.perf_counter()
    idx.add_items(base, np.arange(len(base)), num_threads=threads)
    build = time.perf_counter() - t0
    idx.set_num_threads(1)
    curve = []
    for ef in efs:
        idx.set_ef(max(ef, a.k))
        t0 = time.perf_counter()
        labels, _ = idx.knn_query(queries, k=a.k, num_threads=1)
        s = time.perf_counter() - t0
        curve.append({"ef": ef, "recall": recall(labels, truth, a.k), "qps": len(queries) / s})
    idx.set_ef(max(a.qps_ef, a.k))
    t0 = time.perf_counter()
    idx.knn_query(queries, k=a.k, num_threads=1)
    rounds = max(1, min(1000, int(np.ceil(2.0 / max(time.perf_counter() - t0, 1e-6)))))
    many = np.concatenate([queries] * rounds)
    par = {"ef": a.qps_ef, "searches": len(many)}
    for n in (1, 2):
        t0 = time.perf_counter()
        idx.knn_query(many, k=a.k, num_threads=n)
        par[f"qps_{n}"] = len(many) / (time.perf_counter() - t0)
    par["ratio"] = par["qps_2"] / par["qps_1"]
    out["hnswlib"] = {"build_s": build, "search": curve, "threads": threads, "parallel": par}
    if a.save_dir:
        path = os.path.join(a.save_dir, "hnswlib.bin")
        idx.save_index(path)
        del idx
        out["hnswlib"]["open_s"] = open_seconds("hnswlib", path, a.queries)
    else:
        del idx
    if a.only:
        print(json.dumps(out))
        return

    import faiss

    faiss.omp_set_num_threads(threads)
    fx = faiss.IndexHNSWFlat(base.shape[1], a.M, faiss.METRIC_INNER_PRODUCT)
    fx.hnsw.efConstruction = a.efc
    t0 = time.perf_counter()
    fx.add(base)
    build = time.perf_counter() - t0
    faiss.omp_set_num_threads(1)
    curve = []
    for ef in efs:
        fx.hnsw.efSearch = max(ef, a.k)
        t0 = time.perf_counter()
        _, labels = fx.search(queries, a.k)
        s = time.perf_counter() - t0
        curve.append({"ef": ef, "recall": recall(labels, truth, a.k), "qps": len(queries) / s})
    out["faiss"] = {"build_s": build, "search": curve, "threads": threads}
    if a.save_dir:
        path = os.path.join(a.save_dir, "faiss.index")
        faiss.write_index(fx, path)
        del fx
        out["faiss"]["open_s"] = open_seconds("faiss", path, a.queries)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
