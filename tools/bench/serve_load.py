"""Concurrent vector-query load against echovault serve, chromadb (its HTTP server) and
milvus-lite, on the same vectors, for tools/bench-serve.

    serve_load.py echovault URL DATA_DIR [--clients 8] [--requests 4000]
    serve_load.py chroma    HOST:PORT DATA_DIR ...      (loads the base vectors first)
    serve_load.py milvus    DB_FILE DATA_DIR ...        (loads the base vectors first)
    serve_load.py text      URL TEXTS_FILE ...          (echovault text queries, see below)

DATA_DIR holds base.npy, queries.npy and truth.npy (tools/bench/ann_data.py). Every peer is
first asked each query once (recall@10 against the exact truth, single client), then CLIENTS
threads send REQUESTS queries in all (cycling over the query set) as fast as they are answered:
QPS = requests / wall time, latency percentiles over all requests. Prints one JSON object.
`text` mode sends {"text": ...} searches from a file of lines: the first pass is all distinct
(cache misses), the timed pass repeats them (cache hits when the server caches).
"""
import argparse
import http.client
import json
import os
import statistics
import sys
import threading
import time
import urllib.parse

import numpy as np


def echovault_client(url):
    u = urllib.parse.urlparse(url)
    local = threading.local()

    def conn():
        if not hasattr(local, "c"):
            local.c = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
        return local.c

    def post(body):
        c = conn()
        c.request("POST", "/v1/search", body=json.dumps(body), headers={"Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read()
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {data[:300]!r}")
        return json.loads(data)

    def query(v, k):
        out = post({"vector": [float(x) for x in v], "kind": "video", "k": k})
        return [int(h["id"][1:]) for h in out["hits"]]

    def text(t, k):
        return [h["id"] for h in post({"text": t, "kind": "video", "k": k})["hits"]]

    return query, text


def chroma_client(hostport, base, ef):
    import chromadb

    host, port = hostport.split(":")
    c = chromadb.HttpClient(host=host, port=int(port))
    cfg = {"hnsw": {"space": "ip", "ef_search": ef, "ef_construction": 200, "max_neighbors": 16}}
    try:
        col = c.get_collection("bench")
        if col.count() != len(base):
            c.delete_collection("bench")
            raise ValueError
    except Exception:
        col = c.create_collection("bench", configuration=cfg)
        t0 = time.time()
        for i in range(0, len(base), 5000):
            col.add(ids=[f"g{j}" for j in range(i, min(i + 5000, len(base)))], embeddings=base[i : i + 5000])
        print(f"[serve_load] chroma: loaded {len(base)} vectors in {time.time() - t0:.0f} s", file=sys.stderr)
    local = threading.local()

    def query(v, k):
        if not hasattr(local, "col"):
            local.col = chromadb.HttpClient(host=host, port=int(port)).get_collection("bench")
        r = local.col.query(query_embeddings=[v], n_results=k, include=[])
        return [int(x[1:]) for x in r["ids"][0]]

    return query


def milvus_client(db, base):
    from pymilvus import MilvusClient

    c = MilvusClient(db)
    if not c.has_collection("bench") or c.get_collection_stats("bench")["row_count"] != len(base):
        if c.has_collection("bench"):
            c.drop_collection("bench")
        c.create_collection("bench", dimension=base.shape[1], metric_type="IP", auto_id=False, id_type="int")
        t0 = time.time()
        for i in range(0, len(base), 5000):
            c.insert("bench", [{"id": j, "vector": base[j].tolist()} for j in range(i, min(i + 5000, len(base)))])
        print(f"[serve_load] milvus: loaded {len(base)} vectors in {time.time() - t0:.0f} s", file=sys.stderr)
    c.load_collection("bench")  # a collection reopened from the file starts released
    idx = c.list_indexes("bench")
    kind = c.describe_index("bench", idx[0])["index_type"] if idx else "none"

    def query(v, k):
        r = c.search("bench", data=[v.tolist()], limit=k, output_fields=[])
        return [int(h["id"]) for h in r[0]]

    query.index_type = kind
    return query


def load(ask, items, clients, requests):
    """`requests` calls of ask(items[i % n]) from `clients` threads; latencies in seconds."""
    lat = [[] for _ in range(clients)]
    errors = []
    counter = iter(range(requests))
    lock = threading.Lock()

    def worker(t):
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            t0 = time.perf_counter()
            try:
                ask(items[i % len(items)])
            except Exception as e:  # counted, the run goes on
                errors.append(repr(e))
            lat[t].append(time.perf_counter() - t0)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(clients)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    all_lat = sorted(x for l in lat for x in l)
    q = statistics.quantiles(all_lat, n=100)
    return {
        "requests": len(all_lat),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "qps": len(all_lat) / wall,
        "p50_ms": q[49] * 1e3,
        "p99_ms": q[98] * 1e3,
        "wall_s": wall,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("peer", choices=["echovault", "chroma", "milvus", "text"])
    ap.add_argument("where")
    ap.add_argument("data")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--ef", type=int, default=64, help="chroma ef_search")
    ap.add_argument("--recall-queries", type=int, default=0, help="recall over the first N queries only (0: all)")
    a = ap.parse_args()
    if a.peer == "text":
        texts = [l.strip() for l in open(a.data) if l.strip()]
        _, text = echovault_client(a.where)
        ask = lambda t: text(t, a.k)
        cold = load(ask, texts, a.clients, len(texts))
        warm = load(ask, texts, a.clients, a.requests)
        print(json.dumps({"peer": "echovault-text", "distinct_texts": len(texts), "cold": cold, "warm": warm}))
        return
    base = np.load(os.path.join(a.data, "base.npy")).astype(np.float32)
    queries = np.load(os.path.join(a.data, "queries.npy")).astype(np.float32)
    truth = np.load(os.path.join(a.data, "truth.npy"))[:, : a.k]
    extra = {}
    if a.peer == "echovault":
        ask, _ = echovault_client(a.where)
    elif a.peer == "chroma":
        ask = chroma_client(a.where, base, a.ef)
        extra["ef_search"] = a.ef
    else:
        ask = milvus_client(a.where, base)
        extra["index_type"] = ask.index_type
    hits = 0
    nr = a.recall_queries or len(queries)
    for i, q in enumerate(queries[:nr]):
        hits += len(set(ask(q, a.k)) & set(truth[i].tolist()))
    recall = hits / (nr * a.k)
    res = load(lambda q: ask(q, a.k), list(queries), a.clients, a.requests)
    print(json.dumps({"peer": a.peer, "n": len(base), "dim": base.shape[1], "k": a.k, "clients": a.clients, "recall": recall, "recall_queries": nr, **extra, **res}))


if __name__ == "__main__":
    main()
