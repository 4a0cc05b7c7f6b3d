//! `evindex bench`: build an index from `.npy` vectors and measure what `BENCHMARKS.md` reports.
//! `tools/bench-ann` runs it beside hnswlib and faiss on the same files and the same machine.
//!
//! ```text
//! evindex bench --base B.npy --queries Q.npy --truth T.npy --dir DIR
//!               [--ef 16,32,64,128,256] [--k 10] [--encoding f32|f16] [--rebuild-open]
//!               [--filters] [--reuse]
//! ```
//! Prints one JSON object: build seconds, recall@k and single-thread QPS per ef, open seconds
//! (snapshot load; with `--rebuild-open` also a forced rebuild), bytes per vector on disk.
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
    let opts = || IndexOptions { encoding: a.encoding, ..IndexOptions::default() };
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
    drop(index);
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
