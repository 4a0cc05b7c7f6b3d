//! `evindex lookups DIR [RECORDS] [DIM]`: look-ups and filtered searches on a large synthetic
//! archive (DESIGN: a patient's timeline and a filtered search under 50 ms at 1M records).
//!
//! Builds DIR once (kept for the next run, and a build cut short continues; delete it to
//! rebuild): RECORDS (default 1,000,000)
//! records of kinds video, study and report in the ratio 8:1:1, 20 per patient, dated over ten
//! years, each with a DIM-dimensional (default 16) clustered vector; the vectors only make the
//! graphs real, the look-ups never touch them. Then times, over 200 random patients each:
//! - `timeline`: `items_by_patient` and the stored vector of each of the patient's studies
//!   (what `echovault timeline` reads);
//! - `by_study`: `items_by_study`;
//! - `by_date`: `items_by_date` over one week, studies only;
//! - `search_patient`, `search_month`, `search_patient_month`: k = 10 searches of videos
//!   filtered by the patient, by a month, by both.
//!
//! Prints one JSON object: per operation p50, p99 and max in milliseconds, and results found.

use echovault_index::{Filter, Index, IndexOptions, ItemRecord, Kind, Query, SpaceId, StudyDate};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::collections::BTreeMap;
use std::time::Instant;

type Res = Result<(), Box<dyn std::error::Error>>;

/// Records per patient (one study in ten, one report in ten).
const PER_PATIENT: usize = 20;
/// Records per commit while building.
const BUILD_BATCH: usize = 10_000;
/// Patients each operation is timed on.
const SAMPLES: usize = 200;

pub fn run(args: &[String]) -> Res {
    let dir = args.first().ok_or("usage: evindex lookups DIR [RECORDS] [DIM]")?;
    let n: usize = args.get(1).map_or(Ok(1_000_000), |s| s.parse())?;
    let dim: usize = args.get(2).map_or(Ok(16), |s| s.parse())?;
    let t0 = Instant::now();
    let index = Index::open(dir, IndexOptions::default())?;
    let space = index.ensure_space("synthetic", dim)?;
    // Batches commit whole and in id order: what is there is a prefix of the records.
    let have: usize = index.counts()?.items.values().sum();
    let fresh = have < n;
    if fresh {
        build(&index, space, have, n, dim)?;
    }
    let open_s = t0.elapsed().as_secs_f64();
    let patients = n / PER_PATIENT;
    let base = StudyDate::new(2015, 1, 1)?.days_since_epoch();
    let mut rng = StdRng::seed_from_u64(7);
    let mut out = serde_json::Map::new();
    out.insert("records".into(), n.into());
    out.insert("dim".into(), dim.into());
    out.insert(if fresh { "build_and_open_s" } else { "open_s" }.into(), open_s.into());
    let sample: Vec<usize> = (0..SAMPLES).map(|_| rng.random_range(0..patients)).collect();
    let q: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let mut time = |name: &str, f: &mut dyn FnMut(usize) -> Result<usize, Box<dyn std::error::Error>>| -> Res {
        let mut ms = Vec::with_capacity(SAMPLES);
        let mut found = 0;
        for &p in &sample {
            let t = Instant::now();
            found += f(p)?;
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        ms.sort_by(f64::total_cmp);
        let pct = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
        let row = serde_json::json!({ "p50_ms": pct(0.5), "p99_ms": pct(0.99), "max_ms": pct(1.0), "results": found });
        out.insert(name.into(), row);
        Ok(())
    };
    time("timeline", &mut |p| {
        let recs = index.items_by_patient(&format!("p{p}"))?;
        let mut n = 0;
        for r in recs.iter().filter(|r| r.kind == Kind::Study) {
            n += usize::from(index.get_vector(space, Kind::Study, &r.id)?.is_some());
        }
        Ok(n)
    })?;
    time("by_study", &mut |p| Ok(index.items_by_study(&format!("s{}", p * 2))?.len()))?;
    time("by_date", &mut |p| {
        let since = StudyDate::from_days_since_epoch(base + (p % 3650) as i64).ok_or("date")?;
        let until = StudyDate::from_days_since_epoch(since.days_since_epoch() + 6).ok_or("date")?;
        Ok(index.items_by_date(Some(since), Some(until), Some(Kind::Study))?.len())
    })?;
    let month = |p: usize| -> Result<(StudyDate, StudyDate), Box<dyn std::error::Error>> {
        let since = StudyDate::from_days_since_epoch(base + (p % 3620) as i64).ok_or("date")?;
        Ok((since, StudyDate::from_days_since_epoch(since.days_since_epoch() + 30).ok_or("date")?))
    };
    let mut search = |name: &str, filter: &dyn Fn(usize) -> Result<Filter, Box<dyn std::error::Error>>| {
        time(name, &mut |p| {
            let mut query = Query::new(space, Kind::Video, q.clone(), 10);
            query.filter = filter(p)?;
            Ok(index.search(&query)?.len())
        })
    };
    search("search_patient", &|p| Ok(Filter { patient: Some(format!("p{p}")), ..Filter::default() }))?;
    search("search_month", &|p| {
        let (since, until) = month(p)?;
        Ok(Filter { since: Some(since), until: Some(until), ..Filter::default() })
    })?;
    search("search_patient_month", &|p| {
        let (since, until) = month(p)?;
        Ok(Filter { patient: Some(format!("p{p}")), since: Some(since), until: Some(until), ..Filter::default() })
    })?;
    println!("{}", serde_json::Value::Object(out));
    Ok(())
}

/// Writes synthetic records `from..n` with clustered vectors, then checkpoints.
fn build(index: &Index, space: SpaceId, from: usize, n: usize, dim: usize) -> Res {
    let mut rng = StdRng::seed_from_u64(1 + from as u64);
    let centres: Vec<Vec<f32>> = (0..64).map(|_| (0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect()).collect();
    let base = StudyDate::new(2015, 1, 1)?.days_since_epoch();
    let t = Instant::now();
    for start in (from..n).step_by(BUILD_BATCH) {
        let mut b = index.batch();
        for i in start..(start + BUILD_BATCH).min(n) {
            let (patient, j) = (i / PER_PATIENT, i % PER_PATIENT);
            // Two studies per patient, a year or so apart; ten records each.
            let study = patient * 2 + j / 10;
            let kind = match j % 10 {
                0 => Kind::Study,
                1 => Kind::Report,
                _ => Kind::Video,
            };
            let day = base + ((patient * 37 + (j / 10) * 400) % 3650) as i64;
            let mut r = ItemRecord::new(format!("i{i:07}"), kind, "synthetic");
            r.patient = Some(format!("p{patient}"));
            r.study = Some(format!("s{study}"));
            r.date = StudyDate::from_days_since_epoch(day);
            r.extra = BTreeMap::from([("size".to_owned(), "640x480".to_owned())]);
            let c = &centres[rng.random_range(0..centres.len())];
            let v: Vec<f32> = c.iter().map(|x| x + rng.random_range(-0.3f32..0.3)).collect();
            b.put_vector(space, r.id.clone(), kind, v);
            b.put_item(r);
        }
        index.commit(b)?;
        if start % 100_000 == 0 {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("built {start} records in {:.0} s", t.elapsed().as_secs_f64());
            }
        }
    }
    index.checkpoint()?;
    index.compact()?;
    Ok(())
}
