#!/usr/bin/env python3
"""Sharded ingest on a Ray cluster: one Ray task per shard runs `echovault ingest SOURCE
--shard I/N` into an index of its own and exports it as Parquet (`echovault export --format
parquet`); the driver then builds one index from the shards' files (`echovault import F1 F2 ...`).

    .venv/bin/python tools/ray/ingest.py /exports/echo --index ./merged --shards 8 \
        --model DIR --address ray://head:10001 --num-gpus 1 -- --reports /exports/reports.jsonl

SOURCE is what `echovault ingest` takes: a folder, files, or one `dicomweb:URL`. Every task must
see it under the same path (a shared filesystem: NFS, a PACS export mounted everywhere) or reach
the DICOMweb server; the echovault binary (`--echovault`, with `echovault-engine` beside it) and
the model directory likewise. A study never splits between shards (see `ingest --shard`).

Where the shard indexes and Parquet files go: with `--work DIR` (a folder every node sees) the
tasks write there and the driver reads the files in place; without it each task works in a
temporary folder of its node and hands its Parquet file back through Ray's object store (fine
for a single machine or shards of a few GB). The shard files carry the frame embeddings unless
`--no-frames`; source paths only with `--with-paths` (PACS paths carry names: without them the
merged index shows no thumbnails or paths). The shard files hold patient keys and report text:
after a successful import the driver deletes them and the shard indexes (under --work and in its
temporary folder) unless `--keep`; after a failed one they stay for a rerun, and the error says
where.

Patient keys: every shard and the merged index must key patients with one secret, so the driver
makes one secret file (`--secret-file`, created 0600 when it does not exist; default INDEX.secret
beside the merged index, kept: later ingests into the merged index need it as their
`--secret-file`) and passes it to every ingest and to the import. It must be on a path every node
reads (a shared folder; on one machine any path).

Without `--address` the script starts a local Ray instance (`ray.init(num_cpus=...)`);
`--local-nodes K` instead starts a head without CPUs and K worker nodes (separate raylets on
this machine, `ray.cluster_utils.Cluster`), so the shards run on different Ray nodes and their
results cross nodes through the object store, as on a real cluster.

Prints one JSON object: per shard its ingest summary counts, node and seconds; the import's
output; the wall time of each phase.
"""

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", nargs="+", help="what `echovault ingest` takes: folders/files, or one dicomweb:URL")
    p.add_argument("--index", required=True, help="the merged index directory (built by `echovault import`)")
    p.add_argument("--shards", type=int, default=2, help="number of shards N (one Ray task each; default 2)")
    p.add_argument("--echovault", default="echovault", help="path of the echovault binary on every node (echovault-engine beside it)")
    p.add_argument("--model", action="append", default=[], help="model directory or hf:OWNER/NAME (repeatable, as echovault's --model)")
    p.add_argument("--device", default=None, help="echovault --device for the ingests (cpu, cuda, auto); default: cuda when --num-gpus > 0")
    p.add_argument("--address", default=None, help="ray.init(address=...) of a running cluster (e.g. auto, ray://head:10001)")
    p.add_argument("--num-gpus", type=float, default=0, help="GPUs each shard's task asks Ray for (default 0)")
    p.add_argument("--num-cpus", type=float, default=1, help="CPUs each shard's task asks Ray for (default 1)")
    p.add_argument("--local-nodes", type=int, default=0, help="without --address: start a head and this many worker nodes on this machine")
    p.add_argument("--cpus-per-node", type=int, default=1, help="CPUs of each --local-nodes worker node (default 1)")
    p.add_argument("--work", default=None, help="a folder every node sees, for the shard indexes and Parquet files")
    p.add_argument("--secret-file", default=None, help="patient-key secret shared by all shards (default INDEX.secret, made if missing)")
    p.add_argument("--keep", action="store_true", help="keep the shard indexes and Parquet files (deleted after a successful import otherwise)")
    p.add_argument("--no-frames", action="store_true", help="leave the frame embeddings out of the shard files (the merged index then has none: no zero-shot of indexed videos)")
    p.add_argument("--with-paths", action="store_true", help="write the source paths into the shard files (PHI: PACS paths carry names; without them the merged index cannot show thumbnails or paths)")
    p.epilog = "After --: further `echovault ingest` flags for every shard (--reports, --workers, --batch, --since...)."
    cut = argv.index("--") if "--" in argv else len(argv)
    a = p.parse_args(argv[:cut])
    a.ingest_args = argv[cut + 1 :]
    if a.shards < 1:
        p.error(f"--shards {a.shards}: at least 1")
    if a.local_nodes and a.address:
        p.error("--local-nodes starts a cluster here; --address uses a running one: not both")
    for flag in ("--shard", "--index", "--json"):
        if flag in a.ingest_args:
            p.error(f"{flag} after --: the script sets it")
    return a


def make_secret(path):
    """A new patient-key secret file (64 hex digits, mode 0600), unless one is there."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")


def run(cmd, what):
    """Runs cmd; its stdout, or an error naming the command, its exit code and stderr."""
    t0 = time.monotonic()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # 3: some inputs failed, the rest went in (their reasons are in the summary).
    if p.returncode not in (0, 3):
        raise RuntimeError(f"{what}: `{' '.join(cmd)}` exited {p.returncode}:\n{p.stderr[-4000:]}")
    return p.stdout, p.returncode, time.monotonic() - t0


def shard_task(i, n, a, shard_dir, secret):
    """Ingest shard i of n into shard_dir/index, export it to shard_dir/shard-I.parquet.
    Returns the summary, and the file's bytes when it is not on a shared folder."""
    import socket

    own_tmp = None
    if shard_dir is None:
        own_tmp = tempfile.mkdtemp(prefix=f"echovault-shard{i}-")
        shard_dir = own_tmp
    os.makedirs(shard_dir, exist_ok=True)
    index = os.path.join(shard_dir, "index")
    out = os.path.join(shard_dir, f"shard-{i}.parquet")
    common = [a.echovault, "--index", index, "--secret-file", secret]
    for m in a.model:
        common += ["--model", m]
    device = a.device or ("cuda" if a.num_gpus > 0 else None)
    if device:
        common += ["--device", device]
    try:
        ingest_out, code, ingest_s = run(
            common + ["--json", "ingest", *a.source, "--shard", f"{i}/{n}", "--progress", "none", *a.ingest_args], f"shard {i}/{n} ingest"
        )
        summary = json.loads(ingest_out)
        if os.path.exists(out):
            os.remove(out)
        export = [a.echovault, "--index", index, "export", "--format", "parquet", "--out", out]
        export += [] if a.no_frames else ["--frames"]
        export += ["--with-paths"] if a.with_paths else []
        _, _, export_s = run(export, f"shard {i}/{n} export")
        result = {
            "shard": f"{i}/{n}",
            "node": socket.gethostname() + ":" + ray_node_id(),
            "exit": code,
            "ingest_s": ingest_s,
            "export_s": export_s,
            "summary": {k: summary.get(k) for k in ("found", "ingested", "skipped", "duplicates", "frames", "reports", "other_shard_files", "other_shard_studies")},
            "failed": summary.get("failed", []),
            "ids": summary.get("ids", []),
            "parquet": out,
            "parquet_bytes": os.path.getsize(out),
        }
        if own_tmp is not None:
            with open(out, "rb") as f:
                result["data"] = f.read()
        return result
    finally:
        if own_tmp is not None:
            shutil.rmtree(own_tmp, ignore_errors=True)


def ray_node_id():
    """The Ray node this task runs on (its first 12 hex digits)."""
    import ray

    return ray.get_runtime_context().get_node_id()[:12]


def main(argv):
    a = parse_args(argv)
    import ray

    a.echovault = os.path.abspath(a.echovault) if os.path.sep in a.echovault else (shutil.which(a.echovault) or a.echovault)
    a.model = [m if m.startswith("hf:") else os.path.abspath(m) for m in a.model]
    a.source = [s if s.startswith("dicomweb:") else os.path.abspath(s) for s in a.source]
    work = os.path.abspath(a.work) if a.work else None
    scratch = tempfile.mkdtemp(prefix="echovault-ray-")
    secret = os.path.abspath(a.secret_file or os.path.abspath(a.index).rstrip(os.sep) + ".secret")
    if work:
        os.makedirs(work, exist_ok=True)
    make_secret(secret)

    cluster = None
    t0 = time.monotonic()
    if a.address:
        ray.init(address=a.address)
    elif a.local_nodes:
        from ray.cluster_utils import Cluster

        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
        for _ in range(a.local_nodes):
            cluster.add_node(num_cpus=a.cpus_per_node)
        ray.init(address=cluster.address)
        cluster.wait_for_nodes()
    else:
        ray.init(num_cpus=max(1, int(a.shards * a.num_cpus)), num_gpus=a.num_gpus * a.shards or None, include_dashboard=False)
    start_s = time.monotonic() - t0

    task = ray.remote(num_cpus=a.num_cpus, num_gpus=a.num_gpus, max_retries=0)(shard_task)
    t1 = time.monotonic()
    refs = [task.remote(i, a.shards, a, os.path.join(work, f"shard-{i}") if work else None, secret) for i in range(a.shards)]
    try:
        results = ray.get(refs)
    finally:
        shards_s = time.monotonic() - t1
    files = []
    for r in results:
        if "data" in r:
            path = os.path.join(scratch, os.path.basename(r["parquet"]))
            with open(path, "wb") as f:
                f.write(r.pop("data"))
            r["parquet"] = path
        files.append(r["parquet"])
    ray.shutdown()
    if cluster is not None:
        cluster.shutdown()

    cmd = [a.echovault, "--index", os.path.abspath(a.index), "--secret-file", secret, "--json", "import", *files]
    try:
        import_out, _, import_s = run(cmd, "import")
    except RuntimeError as e:
        raise RuntimeError(f"{e}\nthe shard files (patient keys, report text) are kept for a rerun: {' '.join(files)}") from None
    if not a.keep:
        # The shard files hold patient keys and report text: none is left behind.
        shutil.rmtree(scratch, ignore_errors=True)
        if work:
            for i in range(a.shards):
                shard = os.path.join(work, f"shard-{i}")
                shutil.rmtree(os.path.join(shard, "index"), ignore_errors=True)
                for f in (os.path.join(shard, f"shard-{i}.parquet"),):
                    if os.path.exists(f):
                        os.remove(f)
                try:
                    os.rmdir(shard)
                except OSError:
                    pass
    print(
        json.dumps(
            {
                "shards": results,
                "import": json.loads(import_out),
                "ray_start_s": start_s,
                "shards_s": shards_s,
                "import_s": import_s,
                "total_s": time.monotonic() - t0,
                "secret_file": secret,
            }
        )
    )
    failed = any(r["exit"] == 3 for r in results)
    return 3 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
