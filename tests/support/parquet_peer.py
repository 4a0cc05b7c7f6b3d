"""Peers for `echovault export` / `import` (tests/parquet.rs): pyarrow and DuckDB read the file
echovault wrote; pyarrow writes files echovault imports.

    parquet_peer.py read FILE             -> JSON: metadata, schema, pyarrow rows, DuckDB rows
    parquet_peer.py rewrite IN OUT [--other-model] [--no-probe] [--checkpoint HEX] [--dim N] [--secret FP]
        IN read and written again by pyarrow (its own writer, the key-value metadata kept);
        --other-model flips the sign of the model probe in the metadata (another model's file);
        --no-probe drops the probes, --checkpoint sets each space's checkpoint sha256, --dim its
        dimension (metadata only), --secret the secret fingerprint: malformed or other files.
"""

import json
import sys

import duckdb
import pyarrow.parquet as pq


def read(path):
    f = pq.ParquetFile(path)
    meta = {k.decode(): v.decode() for k, v in (f.metadata.metadata or {}).items() if not k.startswith(b"ARROW:")}
    table = f.read()
    schema = {field.name: str(field.type) for field in table.schema}
    rows = []
    for r in table.to_pylist():
        r["date"] = r["date"].isoformat() if r["date"] is not None else None
        r["extra"] = dict(r["extra"]) if r["extra"] is not None else None
        r["vector"] = [float(x) for x in r["vector"]]
        if r.get("frame_embeddings") is not None:
            r["frame_embeddings"] = [[float(x) for x in fr] for fr in r["frame_embeddings"]]
        rows.append(r)
    con = duckdb.connect()
    q = con.execute(
        "SELECT id, kind, space, patient, study, CAST(date AS VARCHAR), CAST(vector AS DOUBLE[]), len(vector) "
        "FROM read_parquet(?)",
        [path],
    )
    ddb = [
        {"id": i, "kind": k, "space": s, "patient": p, "study": st, "date": d, "vector": v, "dim": n}
        for (i, k, s, p, st, d, v, n) in q.fetchall()
    ]
    by_kind = dict(con.execute("SELECT kind, count(*) FROM read_parquet(?) GROUP BY kind", [path]).fetchall())
    return {
        "metadata": meta,
        "schema": schema,
        "row_groups": f.metadata.num_row_groups,
        "rows": rows,
        "duckdb": {"rows": ddb, "by_kind": by_kind},
    }


def rewrite(src, dst, other_model, edits=None):
    table = pq.read_table(src)
    # The file's key-value metadata (pyarrow keeps only the Arrow schema's on the table).
    meta = dict(pq.ParquetFile(src).metadata.metadata or {})
    if other_model:
        spaces = json.loads(meta[b"echovault.spaces"])
        for s in spaces:
            for part in ("text", "image"):
                s["probe"][part] = [-x for x in s["probe"][part]]
            if s.get("model"):
                s["model"]["checkpoint"] = "0" * 64
        meta[b"echovault.spaces"] = json.dumps(spaces).encode()
    edits = edits or {}
    spaces = json.loads(meta[b"echovault.spaces"])
    for s in spaces:
        if "--no-probe" in edits:
            s["probe"] = None
        if "--checkpoint" in edits:
            s["model"] = dict(s.get("model") or {"space": s["name"], "path": "/models/x"}, checkpoint=edits["--checkpoint"])
        if "--dim" in edits:
            s["dim"] = int(edits["--dim"])
    meta[b"echovault.spaces"] = json.dumps(spaces, ensure_ascii=False).encode()
    if "--secret" in edits:
        meta[b"echovault.secret_fingerprint"] = edits["--secret"].encode()
    meta = {k: v for k, v in meta.items() if not k.startswith(b"ARROW:")}
    pq.write_table(table.replace_schema_metadata(meta), dst)


if __name__ == "__main__":
    if sys.argv[1] == "read":
        print(json.dumps(read(sys.argv[2])))
    elif sys.argv[1] == "rewrite":
        rest, edits = sys.argv[4:], {}
        while rest:
            flag = rest.pop(0)
            if flag in ("--other-model", "--no-probe"):
                edits[flag] = True
            elif flag in ("--checkpoint", "--dim", "--secret"):
                edits[flag] = rest.pop(0)
            else:
                sys.exit(f"unknown option {flag}")
        rewrite(sys.argv[2], sys.argv[3], "--other-model" in edits, edits)
    else:
        sys.exit(f"unknown command {sys.argv[1]}")
