#!/usr/bin/env python3
"""An independent implementation of the clinical-task algorithms of DESIGN §6, in numpy, written
from the design text (not from the Rust code), for the parity tests: fed the same embeddings,
its outputs must equal echovault's to float tolerance.

Usage: tasks_ref.py IN.json → OUT.json on stdout. IN holds a list of "cases", each one of:
  {"op": "binary", "frames": [[...]], "prompts": [[...]]}
  {"op": "regression", "frames": [[...]], "prompts": [[...]], "values": [...], "head": 0.2}
  {"op": "categorical", "frames": [[...]], "classes": [[[...]]]}
  {"op": "auc", "pos": [...], "neg": [...]}
  {"op": "bootstrap_auc", "scores": [...], "labels": [0|1...], "resamples": 1000, "seed": S}
  {"op": "bootstrap_mae", "pred": [...], "truth": [...], "resamples": 1000, "seed": S}
and OUT has "results", one per case (null where undefined)."""
import json
import sys

import numpy as np

MASK = (1 << 64) - 1


class SplitMix64:
    """Vigna's SplitMix64; `below(n)` is the next output modulo n."""

    def __init__(self, seed):
        self.state = seed & MASK

    def next(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def below(self, n):
        return self.next() % n


def binary(frames, prompts):
    f, p = np.asarray(frames, np.float64), np.asarray(prompts, np.float64)
    if f.size == 0 or p.size == 0:
        return None
    return float((f @ p.T).mean())


def regression(frames, prompts, values, head):
    f, p, v = np.asarray(frames, np.float32), np.asarray(prompts, np.float32), np.asarray(values, np.float64)
    if len(f) == 0 or len(p) == 0 or len(p) != len(v):
        return None
    sims = f @ p.T                                      # frames × prompts
    order = np.argsort(-sims, axis=1, kind="stable")    # most similar first, ties in prompt order
    ranked = v[order].mean(axis=0)                      # average of ranked value lists, per position
    top = min(max(int(np.floor(len(v) * head)), 1), len(v))  # first 20 %, rounded down
    first = np.sort(ranked[:top])
    return float(first[(top - 1) // 2])                 # lower median


def categorical(frames, classes):
    scores = [binary(frames, c) for c in classes]
    if not scores or any(s is None for s in scores):
        return None
    return {"best": int(np.argmax(scores)), "scores": scores}


def auc(pos, neg):
    pos, neg = np.asarray(pos, np.float64), np.asarray(neg, np.float64)
    if len(pos) == 0 or len(neg) == 0:
        return None
    # Probability that a positive outscores a negative, ties half.
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def bootstrap(n, resamples, seed, stat):
    value = stat(np.arange(n))
    if value is None:
        return None
    rng = SplitMix64(seed)
    vals = []
    for _ in range(resamples):
        idx = np.array([rng.below(n) for _ in range(n)])
        v = stat(idx)
        if v is not None:
            vals.append(v)
    lo, hi = (np.percentile(vals, [2.5, 97.5]) if vals else (float("nan"), float("nan")))
    return {"value": value, "lo": float(lo), "hi": float(hi), "resamples": resamples, "undefined": resamples - len(vals)}


def run(case):
    op = case["op"]
    if op == "binary":
        return binary(case["frames"], case["prompts"])
    if op == "regression":
        return regression(case["frames"], case["prompts"], case["values"], case.get("head", 0.2))
    if op == "categorical":
        return categorical(case["frames"], case["classes"])
    if op == "auc":
        return auc(case["pos"], case["neg"])
    if op == "bootstrap_auc":
        s, y = np.asarray(case["scores"]), np.asarray(case["labels"])
        return bootstrap(len(s), case["resamples"], case["seed"], lambda i: auc(s[i][y[i] == 1], s[i][y[i] == 0]))
    if op == "bootstrap_mae":
        p, t = np.asarray(case["pred"]), np.asarray(case["truth"])
        return bootstrap(len(p), case["resamples"], case["seed"], lambda i: float(np.abs(p[i] - t[i]).mean()) if len(i) else None)
    raise ValueError(f"unknown op {op}")


def main():
    with open(sys.argv[1]) as f:
        cases = json.load(f)["cases"]
    json.dump({"results": [run(c) for c in cases]}, sys.stdout)


if __name__ == "__main__":
    main()
