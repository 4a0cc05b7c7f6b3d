#!/usr/bin/env python3
"""An independent implementation of the clinical-task algorithms of DESIGN §6, in numpy, written
from the design text (not from the Rust code), for the parity tests: fed the same embeddings,
its outputs must equal echovault's to float tolerance. Where the design leaves a choice open,
both follow the conventions echovault documents: similarities in float64, ties in a ranking
count against the truth, stable order (then the lower index) on equal scores, the first 20 %
rounded down, SplitMix64 for bootstrap resamples and pair samples.

Usage: tasks_ref.py IN.json → OUT.json on stdout. IN holds a list of "cases", each one of:
  {"op": "binary", "frames": [[...]], "prompts": [[...]]}
  {"op": "present", "frames": [[...]], "prompts": [[...]], "threshold": T}
  {"op": "regression", "frames": [[...]], "prompts": [[...]], "values": [...], "head": 0.2}
  {"op": "categorical", "frames": [[...]], "classes": [[[...]]]}
  {"op": "auc", "pos": [...], "neg": [...]}
  {"op": "bootstrap_auc", "scores": [...], "labels": [0|1...], "resamples": 1000, "seed": S}
  {"op": "bootstrap_mae", "pred": [...], "truth": [...], "resamples": 1000, "seed": S}
  {"op": "reid_pairs", "vectors": [[...]], "patients": [...], "studies": [...], "max_pairs": N, "seed": S}
  {"op": "transitions", "visits": [{"patient", "day", "vector"}], "events": [{"patient", "day", "kind"}], "window": D}
  {"op": "timeline", "visits": [...], "event": DAY|null, "window": D, "drop": X}
  {"op": "retrieval", "videos": [[...]], "reports": [[...]], "truth": [...]}
and OUT has "results", one per case (null where undefined).

`tasks_ref.py eval DUMP.json` recomputes a whole `echovault eval ... --dump-inputs DUMP.json`
table from the dumped embeddings and labels: {"rows": [{"metric", "n", "value", "lo", "hi"}]}."""
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


def present(frames, prompts, threshold):
    """A binary finding reads as present when its score is strictly above the threshold (the
    EchoCLIP reference's pacemaker rule: score > 0.298)."""
    score = binary(frames, prompts)
    return None if score is None else bool(score > threshold)


def regression(frames, prompts, values, head):
    f, p, v = np.asarray(frames, np.float64), np.asarray(prompts, np.float64), np.asarray(values, np.float64)
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


def sims64(a, b):
    return np.asarray(a, np.float64) @ np.asarray(b, np.float64).T


def reid_pairs(vectors, patients, studies, max_pairs, seed):
    """Pair similarities by relation: same study, same patient (other study), different patient."""
    n = len(vectors)
    S = sims64(vectors, vectors) if n else np.zeros((0, 0))
    out = {"same_study": [], "same_patient": [], "different": [], "sampled": False}

    def put(i, j):
        key = "different" if patients[i] != patients[j] else ("same_study" if studies[i] == studies[j] else "same_patient")
        out[key].append(float(S[i, j]))

    if n * (n - 1) // 2 <= max_pairs:
        for i, j in zip(*np.triu_indices(n, k=1)):
            put(int(i), int(j))
    else:
        rng = SplitMix64(seed)
        for _ in range(max_pairs):
            i = rng.below(n)
            j = rng.below(n - 1)
            put(i, j + 1 if j >= i else j)
        out["sampled"] = True
    return out


def transitions(visits, events, window):
    """Per event: the patient's visits within the window, earliest first; the earliest (if
    before the event) is the reference, every other visit scored by its similarity to it."""
    out = []
    for e, ev in enumerate(events):
        idx = [i for i, v in enumerate(visits) if v["patient"] == ev["patient"] and abs(v["day"] - ev["day"]) <= window]
        idx.sort(key=lambda i: (visits[i]["day"], i))
        if not idx or visits[idx[0]]["day"] >= ev["day"]:
            continue
        ref = idx[0]
        for i in idx[1:]:
            sim = float(np.dot(np.asarray(visits[ref]["vector"], np.float64), np.asarray(visits[i]["vector"], np.float64)))
            out.append({"event": e, "visit": i, "reference": ref, "similarity": sim, "after": visits[i]["day"] >= ev["day"]})
    return out


def timeline(visits, event, window, drop):
    keep = [i for i, v in enumerate(visits) if event is None or abs(v["day"] - event) <= window]
    rows = []
    for k, i in enumerate(keep):
        ref = None if k == 0 else (keep[0] if event is not None else keep[k - 1])
        sim = None if ref is None else float(np.dot(np.asarray(visits[ref]["vector"], np.float64), np.asarray(visits[i]["vector"], np.float64)))
        rows.append({"visit": i, "reference": ref, "similarity": sim, "flagged": False})
    sims = sorted(r["similarity"] for r in rows if r["similarity"] is not None)
    if sims:
        median = sims[(len(sims) - 1) // 2]  # lower median
        for r in rows:
            r["flagged"] = r["similarity"] is not None and r["similarity"] < median - drop
    return rows


def retrieval(videos, reports, truth):
    """Rank (1 = best, ties against the truth) of each video's report among all reports, and of
    the video among all videos for that report (other videos of the same report left out)."""
    S = sims64(videos, reports)  # videos × reports
    truth = np.asarray(truth)
    v2r, r2v = [], []
    for i, r in enumerate(truth):
        own = S[i, r]
        others = np.arange(S.shape[1]) != r
        v2r.append(int(1 + (S[i, others] >= own).sum()))
        cand = (np.arange(S.shape[0]) != i) & (truth != r)
        r2v.append(int(1 + (S[cand, r] >= own).sum()))
    return {"video_to_report": v2r, "report_to_video": r2v}


def _row(metric, n, est):
    if est is None:
        return {"metric": metric, "n": n, "value": None, "lo": None, "hi": None}
    return {"metric": metric, "n": n, "value": est["value"], "lo": est["lo"], "hi": est["hi"]}


def _mean(xs):
    return float(np.mean(xs)) if len(xs) else None


def eval_table(d):
    """The rows of an `echovault eval` table, recomputed from its dumped inputs."""
    R, seed = d["resamples"], d["seed"]
    rows = []
    if d["op"] == "eval_zero_shot":
        for t in d["tasks"]:
            name = t["name"]
            pairs = []
            for inp in d["inputs"]:
                if name not in inp["labels"]:
                    continue
                f = inp["frames"]
                if t["mode"] == "binary":
                    x = binary(f, t["prompts"])
                elif t["mode"] == "regression":
                    x = regression(f, t["prompts"], t["values"], 0.2)
                else:
                    x = float(categorical(f, t["classes"])["best"])
                pairs.append((x, float(inp["labels"][name])))
            P = np.asarray(pairs, np.float64).reshape(-1, 2)
            if t["mode"] == "regression":
                metric, stat = "MAE", lambda i: float(np.abs(P[i, 0] - P[i, 1]).mean()) if len(i) else None
            elif t["mode"] == "binary":
                metric, stat = "AUC", lambda i: auc(P[i][P[i, 1] == 1, 0], P[i][P[i, 1] == 0, 0])
            else:
                metric, stat = "accuracy", lambda i: float((P[i, 0] == P[i, 1]).mean()) if len(i) else None
            rows.append(_row(metric, len(P), bootstrap(len(P), R, seed, stat)))
    elif d["op"] == "eval_reid":
        p = reid_pairs(d["vectors"], d["patients"], d["studies"], d["max_pairs"], seed)
        s = np.asarray(p["same_patient"] + p["different"])
        y = np.asarray([1] * len(p["same_patient"]) + [0] * len(p["different"]))
        rows.append(_row("AUC", len(s), bootstrap(len(s), R, seed, lambda i: auc(s[i][y[i] == 1], s[i][y[i] == 0]))))
        for key in ["same_study", "same_patient", "different"]:
            v = np.asarray(p[key])
            rows.append(_row("mean cosine", len(v), bootstrap(len(v), R, seed, lambda i, v=v: _mean(v[i]))))
    elif d["op"] == "eval_transitions":
        scored = transitions(d["visits"], d["events"], d["window"])
        kinds = sorted({e["kind"] for e in d["events"]})
        groups = [[k] for k in kinds] + ([kinds] if len(kinds) > 1 else [])
        for g in groups:
            sel = [x for x in scored if d["events"][x["event"]]["kind"] in g]
            s = np.asarray([x["similarity"] for x in sel])
            a = np.asarray([x["after"] for x in sel], bool)
            rows.append(_row("AUC before vs after", len(s), bootstrap(len(s), R, seed, lambda i, s=s, a=a: auc(s[i][~a[i]], s[i][a[i]]))))
    elif d["op"] == "eval_retrieval":
        r = retrieval(d["videos"], d["reports"], d["truth"])
        v2r, r2v = np.asarray(r["video_to_report"], np.float64), np.asarray(r["report_to_video"], np.float64)
        n = len(v2r)
        rows.append(_row("MCMRR", n, bootstrap(n, R, seed, lambda i: (v2r[i].mean() + r2v[i].mean()) / 2 if len(i) else None)))
        for ranks in (v2r, r2v):
            rows.append(_row("mean rank", n, bootstrap(n, R, seed, lambda i, x=ranks: _mean(x[i]))))
            for k in (1, 5, 10):
                rows.append(_row(f"recall@{k}", n, bootstrap(n, R, seed, lambda i, x=ranks, k=k: float((x[i] <= k).mean()) if len(i) else None)))
    else:
        raise ValueError(f"unknown eval dump {d['op']}")
    return {"rows": rows}


def run(case):
    op = case["op"]
    if op == "binary":
        return binary(case["frames"], case["prompts"])
    if op == "present":
        return present(case["frames"], case["prompts"], case["threshold"])
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
    if op == "reid_pairs":
        return reid_pairs(case["vectors"], case["patients"], case["studies"], case["max_pairs"], case["seed"])
    if op == "transitions":
        return transitions(case["visits"], case["events"], case["window"])
    if op == "timeline":
        return timeline(case["visits"], case["event"], case["window"], case["drop"])
    if op == "retrieval":
        return retrieval(case["videos"], case["reports"], case["truth"])
    raise ValueError(f"unknown op {op}")


def main():
    if sys.argv[1] == "eval":
        with open(sys.argv[2]) as f:
            json.dump(eval_table(json.load(f)), sys.stdout)
        return
    with open(sys.argv[1]) as f:
        cases = json.load(f)["cases"]
    json.dump({"results": [run(c) for c in cases]}, sys.stdout)


if __name__ == "__main__":
    main()
