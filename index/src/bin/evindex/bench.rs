//! `evindex bench`: build an index from `.npy` vectors and measure what `BENCHMARKS.md` reports.
//! `tools/bench-ann` runs it beside hnswlib and faiss on the same files and the same machine.
//!
//! ```text
//! evindex bench --base B.npy --queries Q.npy --truth T.npy --dir DIR
//!               [--ef 16,32,64,128,256] [--k 10] [--encoding f32|f16] [--rebuild-open]
//!               [--filters] [--reuse] [--qps-ef 64] [--no-parallel] [--no-probe]
//! evindex probe --dir DIR --queries Q.npy [--encoding f32|f16] [--ef 64] [--k 10] [--open-only]
//! ```
//! `bench` prints one JSON object: build seconds, recall@k and single-thread QPS per ef, open
//! seconds (snapshot load; with `--rebuild-open` also a forced rebuild), bytes per vector on disk;
//! `parallel`: QPS at `--qps-ef` with 1 and 2 search threads sharing one `Index` (each thread its
//! own slice of the queries) and their ratio; `probe_warm` / `probe_cold`: what `evindex probe`
//! measured in a fresh process (cold after `sync; echo 3 > /proc/sys/vm/drop_caches`, and
//! `cold_caches` says whether that write was allowed; `--no-probe` skips both).
//!
//! `probe` is a fresh process's view of an index: the time to open it and answer one search,
//! its resident memory (VmRSS after the open and the search minus VmRSS just before the open,
//! per live vector; VmHWM too), then the time of one commit of one new vector (the first insert
//! after an open), which it deletes again and checkpoints (untimed) so the index is as before;
//! `--open-only` stops after the search (no insert, delete or checkpoint of its own: for
//! profiling the open alone; the open itself still replays a write-ahead log a crash left).
//! With `--filters`, also filtered-search recall and latency, graph vs exact, at several
//! selectivities (what `EXACT_SEARCH_MAX_CANDIDATES` was chosen from). `--reuse` keeps the
//! index an earlier run left in `--dir` instead of building it again (no build figures then).

use echovault_index::{Filter, Index, IndexOptions, ItemRecord, Kind, Query, StudyDate, VectorEncoding};
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

type Res<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// A progress line on stderr (a bench over 400k vectors runs for many minutes).
fn progress(msg: &str) {
    let _ = writeln!(std::io::stderr(), "[evindex bench] {msg}");
}

/// A row-major matrix read from a `.npy` file.
struct Matrix {
    rows: usize,
    cols: usize,
    data: Vec<f64>,
}

impl Matrix {
    fn row_f32(&self, i: usize) -> Vec<f32> {
        self.data[i * self.cols..(i + 1) * self.cols].iter().map(|x| *x as f32).collect()
    }
}

/// Reads a C-order `.npy` array of 1 or 2 dimensions (`<f4`, `<f8`, `<i4`, `<i8`).
fn read_npy(path: &Path) -> Res<Matrix> {
    let b = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        return Err(format!("{}: not a .npy file", path.display()).into());
    }
    let (hlen, start) = if b[6] == 1 {
        (u16::from_le_bytes([b[8], b[9]]) as usize, 10)
    } else {
        (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12)
    };
    let header = std::str::from_utf8(b.get(start..start + hlen).ok_or("truncated header")?)?;
    if header.contains("'fortran_order': True") {
        return Err(format!("{}: Fortran order not supported", path.display()).into());
    }
    let descr = header.split("'descr':").nth(1).and_then(|s| s.split('\'').nth(1)).ok_or("no descr")?;
    let shape = header.split("'shape':").nth(1).and_then(|s| s.split('(').nth(1)).and_then(|s| s.split(')').next()).ok_or("no shape")?;
    let dims: Vec<usize> = shape.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::parse).collect::<Result<_, _>>()?;
    let (rows, cols) = match dims.as_slice() {
        [n] => (*n, 1),
        [n, d] => (*n, *d),
        _ => return Err(format!("{}: shape {shape} not supported", path.display()).into()),
    };
    let body = &b[start + hlen..];
    let data: Vec<f64> = match descr {
        "<f4" => body.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64).collect(),
        "<f8" => body.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect(),
        "<i4" => body.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64).collect(),
        "<i8" => body.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f64).collect(),
        d => return Err(format!("{}: dtype {d} not supported", path.display()).into()),
    };
    if data.len() != rows * cols {
        return Err(format!("{}: {} values for shape {rows}x{cols}", path.display(), data.len()).into());
    }
    Ok(Matrix { rows, cols, data })
}

struct Args {
    base: PathBuf,
    queries: PathBuf,
    truth: PathBuf,
    dir: PathBuf,
    efs: Vec<usize>,
    k: usize,
    encoding: VectorEncoding,
    rebuild_open: bool,
    filters: bool,
    reuse: bool,
    qps_ef: usize,
    parallel: bool,
    probe: bool,
}

fn parse(args: &[String]) -> Res<Args> {
    let mut a = Args {
        base: PathBuf::new(),
        queries: PathBuf::new(),
        truth: PathBuf::new(),
        dir: PathBuf::new(),
        efs: vec![16, 32, 64, 128, 256],
        k: 10,
        encoding: VectorEncoding::F32,
        rebuild_open: false,
        filters: false,
        reuse: false,
        qps_ef: 64,
        parallel: true,
        probe: true,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut val = || it.next().cloned().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--base" => a.base = val()?.into(),
            "--queries" => a.queries = val()?.into(),
            "--truth" => a.truth = val()?.into(),
            "--dir" => a.dir = val()?.into(),
            "--ef" => a.efs = val()?.split(',').map(str::parse).collect::<Result<_, _>>()?,
            "--k" => a.k = val()?.parse()?,
            "--encoding" => {
                a.encoding = match val()?.as_str() {
                    "f32" => VectorEncoding::F32,
                    "f16" => VectorEncoding::F16,
                    e => return Err(format!("--encoding {e}: f32 or f16").into()),
                }
            }
            "--rebuild-open" => a.rebuild_open = true,
            "--filters" => a.filters = true,
            "--reuse" => a.reuse = true,
            "--qps-ef" => a.qps_ef = val()?.parse()?,
            "--no-probe" => a.probe = false,
            "--no-parallel" => a.parallel = false,
            "--help" | "-h" => return Err("see the module docs of index/src/bin/evindex/bench.rs".into()),
            f => return Err(format!("unknown flag {f}").into()),
        }
    }
    if a.base.as_os_str().is_empty() || a.queries.as_os_str().is_empty() || a.truth.as_os_str().is_empty() || a.dir.as_os_str().is_empty() {
        return Err("--base, --queries, --truth and --dir are required".into());
    }
    Ok(a)
}

/// Date of base vector `i` in the filter experiment: 1000 classes (`i % 1000`), year 1000 + class,
/// so that a date range selects whole classes.
fn date_of(i: usize) -> StudyDate {
    StudyDate::new(1000 + (i % 1000) as i32, 1, 1).expect("January 1st of the years 1000 to 1999 exists")
}

pub fn run(args: &[String]) -> Res {
    let a = parse(args)?;
    let base = read_npy(&a.base)?;
    let queries = read_npy(&a.queries)?;
    let truth = read_npy(&a.truth)?;
    if base.cols != queries.cols || truth.rows != queries.rows || truth.cols < a.k {
        return Err("base, queries and truth shapes disagree".into());
    }
    // --reuse: keep an index a previous run built in --dir (its build figures are not repeated).
    let reuse = a.reuse && a.dir.join("CURRENT").exists();
    if a.dir.exists() && !reuse {
        std::fs::remove_dir_all(&a.dir)?;
    }
    let opts = || IndexOptions { encoding: Some(a.encoding), ..IndexOptions::default() };
    let mut out = serde_json::Map::new();
    out.insert("n".into(), base.rows.into());
    out.insert("dim".into(), base.cols.into());
    out.insert("encoding".into(), format!("{:?}", a.encoding).to_lowercase().into());
    if !reuse {
        let index = Index::open(&a.dir, opts())?;
        let space = index.ensure_space("bench", base.cols)?;
        let t0 = Instant::now();
        for chunk in (0..base.rows).collect::<Vec<_>>().chunks(10_000) {
            let mut b = index.batch();
            for &i in chunk {
                let id = format!("g{i}");
                let mut r = ItemRecord::new(id.as_str(), Kind::Video, "");
                r.date = Some(date_of(i));
                b.put_item(r);
                b.put_vector(space, id.as_str(), Kind::Video, base.row_f32(i));
            }
            index.commit(b)?;
            let done = chunk[chunk.len() - 1] + 1;
            if done % 100_000 == 0 {
                progress(&format!("inserted {done} of {} vectors, {:.1} s", base.rows, t0.elapsed().as_secs_f64()));
            }
        }
        index.checkpoint()?;
        out.insert("build_s".into(), t0.elapsed().as_secs_f64().into());
        // Kept beside the index so a --reuse run can report the build that made it.
        std::fs::write(a.dir.with_extension("build.json"), serde_json::json!({ "build_s": t0.elapsed().as_secs_f64() }).to_string())?;
        progress(&format!("built {} vectors in {:.1} s", base.rows, t0.elapsed().as_secs_f64()));
        index.compact()?;
        out.insert("bytes_per_vector".into(), (index.disk_bytes()? as f64 / base.rows as f64).into());
    }
    if reuse {
        let built: serde_json::Value = std::fs::read_to_string(a.dir.with_extension("build.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        if let Some(b) = built.get("build_s") {
            out.insert("build_s".into(), b.clone());
            out.insert("build_reused".into(), true.into());
        }
        let index = Index::open(&a.dir, opts())?;
        out.insert("bytes_per_vector".into(), (index.disk_bytes()? as f64 / base.rows as f64).into());
    }
    let t0 = Instant::now();
    let index = Index::open(&a.dir, opts())?;
    out.insert("open_snapshot_s".into(), t0.elapsed().as_secs_f64().into());
    out.insert("open_how".into(), serde_json::to_value(index.graph_loads())?);
    let space = index.space("bench").ok_or("space lost")?.id;
    let qs: Vec<Vec<f32>> = (0..queries.rows).map(|i| queries.row_f32(i)).collect();
    let mut curve = Vec::new();
    for &ef in &a.efs {
        let t0 = Instant::now();
        let mut found = 0usize;
        for (qi, q) in qs.iter().enumerate() {
            let mut query = Query::new(space, Kind::Video, q.clone(), a.k);
            query.ef = Some(ef);
            let hits = index.search_ids(&query)?;
            let want: HashSet<usize> = (0..a.k).map(|j| truth.data[qi * truth.cols + j] as usize).collect();
            found += hits.iter().filter(|(id, _)| id.0[1..].parse::<usize>().is_ok_and(|i| want.contains(&i))).count();
        }
        let secs = t0.elapsed().as_secs_f64();
        let mut row = serde_json::Map::new();
        row.insert("ef".into(), ef.into());
        row.insert("recall".into(), (found as f64 / (qs.len() * a.k) as f64).into());
        row.insert("qps".into(), (qs.len() as f64 / secs).into());
        curve.push(serde_json::Value::Object(row));
        progress(&format!(
            "ef {ef}: recall@{} {:.4}, {:.0} queries/s",
            a.k,
            found as f64 / (qs.len() * a.k) as f64,
            qs.len() as f64 / secs
        ));
    }
    out.insert("search".into(), curve.into());
    if a.filters {
        out.insert("filters".into(), filters(&index, space, &base, &qs, a.k)?);
    }
    if a.parallel {
        out.insert("parallel".into(), threads(&index, space, &qs, a.k, a.qps_ef)?);
    }
    drop(index);
    if a.probe {
        let enc = format!("{:?}", a.encoding).to_lowercase();
        let probe = |cold: bool| -> Res<serde_json::Value> {
            let exe = std::env::current_exe()?;
            let o = std::process::Command::new(exe)
                .args(["probe", "--dir"])
                .arg(&a.dir)
                .arg("--queries")
                .arg(&a.queries)
                .args(["--encoding", &enc, "--ef", &a.qps_ef.to_string(), "--k", &a.k.to_string()])
                .stderr(std::process::Stdio::inherit())
                .output()?;
            if !o.status.success() {
                return Err(format!("evindex probe{} failed: {}", if cold { " (cold)" } else { "" }, o.status).into());
            }
            Ok(serde_json::from_slice(&o.stdout)?)
        };
        out.insert("probe_warm".into(), probe(false)?);
        let dropped = drop_caches();
        out.insert(
            "cold_caches".into(),
            dropped.clone().map_or_else(|e| serde_json::json!({ "allowed": false, "why": e }), |()| serde_json::json!({ "allowed": true })),
        );
        if dropped.is_ok() {
            out.insert("probe_cold".into(), probe(true)?);
        }
    }
    if a.rebuild_open {
        let t0 = Instant::now();
        let index = Index::open(&a.dir, IndexOptions { ignore_snapshots: true, ..opts() })?;
        out.insert("open_rebuild_s".into(), t0.elapsed().as_secs_f64().into());
        drop(index);
    }
    println!("{}", serde_json::Value::Object(out));
    Ok(())
}

/// Filtered search at several selectivities (date ranges holding 1 to 400 of 1000 vector
/// classes): recall@k and latency of the plain filtered graph walk (`search_graph_filtered`,
/// never exact), of exact search over the candidates, and of what `search`
/// does (exact below the threshold, the walk above it), against the exact answer.
fn filters(index: &Index, space: echovault_index::SpaceId, base: &Matrix, qs: &[Vec<f32>], k: usize) -> Res<serde_json::Value> {
    let mut rows = Vec::new();
    let nq = qs.len().min(100);
    for classes in [1usize, 2, 5, 20, 100, 400] {
        let cands = (0..base.rows).filter(|i| i % 1000 < classes).count();
        let (mut g_found, mut g_secs, mut e_secs, mut a_found, mut a_secs) = (0usize, 0f64, 0f64, 0usize, 0f64);
        for q in qs.iter().take(nq) {
            let mut query = Query::new(space, Kind::Video, q.clone(), k);
            query.filter = Filter { since: Some(date_of(0)), until: Some(date_of(classes - 1)), ..Filter::default() };
            query.exact = true;
            let t0 = Instant::now();
            let exact = index.search_ids(&query)?;
            e_secs += t0.elapsed().as_secs_f64();
            let t0 = Instant::now();
            let graph = index.search_graph_filtered(&query)?;
            g_secs += t0.elapsed().as_secs_f64();
            query.exact = false;
            let t0 = Instant::now();
            let auto = index.search_ids(&query)?;
            a_secs += t0.elapsed().as_secs_f64();
            let want: HashSet<&str> = exact.iter().map(|(id, _)| id.0.as_str()).collect();
            g_found += graph.iter().filter(|(id, _)| want.contains(id.0.as_str())).count();
            a_found += auto.iter().filter(|(id, _)| want.contains(id.0.as_str())).count();
        }
        let mut row = serde_json::Map::new();
        row.insert("candidates".into(), cands.into());
        row.insert("selectivity".into(), (cands as f64 / base.rows as f64).into());
        row.insert("graph_recall".into(), (g_found as f64 / (nq * k) as f64).into());
        row.insert("graph_ms".into(), (1e3 * g_secs / nq as f64).into());
        row.insert("exact_ms".into(), (1e3 * e_secs / nq as f64).into());
        row.insert("search_recall".into(), (a_found as f64 / (nq * k) as f64).into());
        row.insert("search_ms".into(), (1e3 * a_secs / nq as f64).into());
        rows.push(serde_json::Value::Object(row));
        progress(&format!("filter over {cands} candidates done"));
    }
    Ok(rows.into())
}

/// QPS at `ef` with 1 and with 2 threads searching one shared `Index`, each thread its own
/// slice of the queries; every run does the same searches (all queries, repeated so that a
/// single-thread run takes about 1 s). Runs alternate 1, 2, 1, 2, 1, 2 threads and the median of
/// each count is kept (a shared 2-core machine's noise hits both alike).
fn threads(index: &Index, space: echovault_index::SpaceId, qs: &[Vec<f32>], k: usize, ef: usize) -> Res<serde_json::Value> {
    let search = |part: &[Vec<f32>], rounds: usize| -> Res<()> {
        for _ in 0..rounds {
            for q in part {
                let mut query = Query::new(space, Kind::Video, q.clone(), k);
                query.ef = Some(ef);
                index.search_ids(&query)?;
            }
        }
        Ok(())
    };
    // One pass to size the runs (and to warm up).
    let t0 = Instant::now();
    search(qs, 1)?;
    let one = t0.elapsed().as_secs_f64().max(1e-6);
    let rounds = ((1.0 / one).ceil() as usize).clamp(1, 1000);
    let mut row = serde_json::Map::new();
    row.insert("ef".into(), ef.into());
    row.insert("searches".into(), (qs.len() * rounds).into());
    let mut runs: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for rep in 0..6 {
        let n = 1 + rep % 2;
        let per = qs.len().div_ceil(n);
        let t0 = Instant::now();
        let results: Vec<Result<(), String>> = std::thread::scope(|sc| {
            let handles: Vec<_> = qs.chunks(per).map(|part| sc.spawn(move || search(part, rounds).map_err(|e| e.to_string()))).collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("search thread panicked".into()))).collect()
        });
        for r in results {
            r?;
        }
        runs[n - 1].push((qs.len() * rounds) as f64 / t0.elapsed().as_secs_f64());
    }
    let mut qps = [0.0f64; 2];
    for (i, r) in runs.iter_mut().enumerate() {
        row.insert(format!("qps_{}_runs", i + 1), r.clone().into());
        r.sort_by(f64::total_cmp);
        qps[i] = r[r.len() / 2];
        row.insert(format!("qps_{}", i + 1), qps[i].into());
        progress(&format!("ef {ef}: {:.0} queries/s on {} thread(s) (median of {})", qps[i], i + 1, r.len()));
    }
    row.insert("ratio".into(), (qps[1] / qps[0]).into());
    Ok(serde_json::Value::Object(row))
}

/// `sync; echo 3 > /proc/sys/vm/drop_caches`: Err says why it could not be done.
fn drop_caches() -> Result<(), String> {
    let synced = std::process::Command::new("sync").status().map_err(|e| format!("sync: {e}"))?;
    if !synced.success() {
        return Err(format!("sync: {synced}"));
    }
    std::fs::write("/proc/sys/vm/drop_caches", "3").map_err(|e| format!("/proc/sys/vm/drop_caches: {e}"))
}

/// `VmRSS` and `VmHWM` of this process, in bytes.
fn rss() -> (u64, u64) {
    (status_bytes("VmRSS:"), status_bytes("VmHWM:"))
}

/// A `kB` field of `/proc/self/status`, in bytes (0 when absent).
fn status_bytes(name: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// `evindex probe`: see the module docs.
pub fn probe(args: &[String]) -> Res {
    let (mut dir, mut queries, mut encoding, mut ef, mut k) = (PathBuf::new(), PathBuf::new(), VectorEncoding::F32, 64usize, 10usize);
    let mut open_only = false;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut val = || it.next().cloned().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--dir" => dir = val()?.into(),
            "--queries" => queries = val()?.into(),
            "--encoding" => {
                encoding = match val()?.as_str() {
                    "f32" => VectorEncoding::F32,
                    "f16" => VectorEncoding::F16,
                    e => return Err(format!("--encoding {e}: f32 or f16").into()),
                }
            }
            "--ef" => ef = val()?.parse()?,
            "--k" => k = val()?.parse()?,
            "--open-only" => open_only = true,
            f => return Err(format!("unknown flag {f}").into()),
        }
    }
    if dir.as_os_str().is_empty() || queries.as_os_str().is_empty() {
        return Err("probe: --dir and --queries are required".into());
    }
    let qm = read_npy(&queries)?;
    let q = qm.row_f32(0);
    let probe_vector: Vec<f32> = qm.row_f32(qm.rows - 1).iter().rev().copied().collect();
    drop(qm);
    let (base_rss, _) = rss();
    let t0 = Instant::now();
    let index = Index::open(&dir, IndexOptions { encoding: Some(encoding), ..IndexOptions::default() })?;
    let open_s = t0.elapsed().as_secs_f64();
    let space = index.space("bench").ok_or("no space 'bench' in the index")?.id;
    let mut query = Query::new(space, Kind::Video, q, k);
    query.ef = Some(ef);
    let t1 = Instant::now();
    let hits = index.search_ids(&query)?;
    let search_s = t1.elapsed().as_secs_f64();
    let first_search_s = t0.elapsed().as_secs_f64();
    let (open_rss, hwm) = rss();
    // Anonymous (heap: graph, vectors, anything freed but kept by malloc) vs file pages mapped.
    let (anon, file) = (status_bytes("RssAnon:"), status_bytes("RssFile:"));
    let vectors: usize = index.graph_loads().iter().map(|l| l.live).sum();
    if open_only {
        let per_vector = (open_rss.saturating_sub(base_rss)) as f64 / vectors.max(1) as f64;
        progress(&format!("probe: open + first search {first_search_s:.2} s, {per_vector:.0} B resident per vector"));
        let out = serde_json::json!({
            "open_s": open_s, "open_to_first_search_s": first_search_s, "hits": hits.len(), "vectors": vectors,
            "rss_peak": hwm, "rss_bytes_per_vector": per_vector, "open_how": index.graph_loads(),
        });
        println!("{out}");
        return Ok(());
    }
    // The first insert after the open: one item, one vector, one commit.
    let t2 = Instant::now();
    let mut b = index.batch();
    b.put_item(ItemRecord::new("probe", Kind::Video, ""));
    b.put_vector(space, "probe", Kind::Video, probe_vector);
    index.commit(b)?;
    let insert_s = t2.elapsed().as_secs_f64();
    let (insert_rss, _) = rss();
    // Put the index back as it was (untimed): the item goes, a fresh snapshot covers the slot.
    let t3 = Instant::now();
    let mut b = index.batch();
    b.delete_item(echovault_index::ItemId("probe".into()));
    index.commit(b)?;
    index.checkpoint()?;
    let restore_s = t3.elapsed().as_secs_f64();
    let mut out = serde_json::Map::new();
    out.insert("open_s".into(), open_s.into());
    out.insert("first_search_s".into(), search_s.into());
    out.insert("open_to_first_search_s".into(), first_search_s.into());
    out.insert("hits".into(), hits.len().into());
    out.insert("vectors".into(), vectors.into());
    out.insert("rss_before_open".into(), base_rss.into());
    out.insert("rss_after_search".into(), open_rss.into());
    out.insert("rss_peak".into(), hwm.into());
    out.insert("rss_anon_after_search".into(), anon.into());
    out.insert("rss_file_after_search".into(), file.into());
    out.insert("rss_bytes_per_vector".into(), ((open_rss.saturating_sub(base_rss)) as f64 / vectors.max(1) as f64).into());
    out.insert("first_insert_s".into(), insert_s.into());
    out.insert("rss_after_insert".into(), insert_rss.into());
    out.insert("restore_s".into(), restore_s.into());
    out.insert("open_how".into(), serde_json::to_value(index.graph_loads())?);
    progress(&format!(
        "probe: open + first search {first_search_s:.2} s, first insert {insert_s:.2} s, {:.0} B resident per vector",
        (open_rss.saturating_sub(base_rss)) as f64 / vectors.max(1) as f64
    ));
    println!("{}", serde_json::Value::Object(out));
    Ok(())
}
