"""hnswlib and faiss-cpu HNSW on the same files as `evindex bench`, same M / efConstruction,
inner product on unit vectors; build with all cores, search single-threaded.
Prints one JSON object: {"hnswlib": {...}, "faiss": {...}} with build_s and a recall/QPS curve;
hnswlib also "threads": QPS at --qps-ef on 1 and 2 search threads and their ratio (what this
machine's two cores give a peer, beside echovault's own ratio)."""
import argparse
import json
import os
import time

import numpy as np


def recall(found, truth, k):
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth)]))


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
    del idx

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
    print(json.dumps(out))


if __name__ == "__main__":
    main()
