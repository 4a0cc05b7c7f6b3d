//! `echovault search (--text T | --video FILE | --like ID)`.

use super::output::{hit_json, hit_line};
use super::{open_engine, Global};
use clap::{ArgGroup, Args};
use echovault::index::{Filter, Kind};
use serde_json::json;
use std::path::PathBuf;

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("query").required(true).args(["text", "video", "like"])))]
pub struct SearchArgs {
    /// Free text, e.g. "severe mitral regurgitation".
    #[arg(long)]
    text: Option<String>,
    /// A video file to find similar items for.
    #[arg(long)]
    video: Option<PathBuf>,
    /// An indexed item id to find similar items for.
    #[arg(long)]
    like: Option<String>,
    /// Kind of items to return: video, report or study.
    #[arg(long, default_value = "video")]
    kind: Kind,
    /// Number of hits.
    #[arg(short, long, default_value_t = 10)]
    k: usize,
    /// Only this (pseudonymous) patient key.
    #[arg(long)]
    patient: Option<String>,
    /// Only this study id.
    #[arg(long)]
    study: Option<String>,
    /// Only studies on or after this date (YYYY-MM-DD).
    #[arg(long)]
    since: Option<echovault::index::StudyDate>,
    /// Only studies on or before this date (YYYY-MM-DD).
    #[arg(long)]
    until: Option<echovault::index::StudyDate>,
    /// Exact (brute-force) search instead of the HNSW graph.
    #[arg(long)]
    exact: bool,
}

pub fn run(g: &Global, a: &SearchArgs) -> anyhow::Result<i32> {
    anyhow::ensure!(g.index.is_dir(), "no index at {} (run `echovault ingest` first, or pass --index DIR)", g.index.display());
    anyhow::ensure!(a.k > 0, "-k must be at least 1");
    let engine = open_engine(g)?;
    let filter =
        Filter { patient: a.patient.clone(), study: a.study.clone(), since: a.since, until: a.until, exclude: Vec::new() };
    let (query, hits) = if let Some(t) = &a.text {
        (json!({ "text": t }), engine.search_vector(engine.embed_text(t)?, a.kind, a.k, filter, a.exact)?)
    } else if let Some(id) = &a.like {
        (json!({ "like": id }), engine.search_like(id, a.kind, a.k, filter, a.exact)?)
    } else if let Some(p) = &a.video {
        (json!({ "video": p.display().to_string() }), engine.search_vector(video_query(&engine, p)?, a.kind, a.k, filter, a.exact)?)
    } else {
        anyhow::bail!("give --text, --video or --like");
    };
    if g.json {
        let hits: Vec<_> = hits.iter().map(hit_json).collect();
        println!("{}", json!({ "query": query, "kind": a.kind.as_str(), "space": engine.space_name, "hits": hits }));
    } else {
        println!("{} {} hits for {query}:", hits.len(), a.kind);
        for (i, h) in hits.iter().enumerate() {
            println!("{}", hit_line(i + 1, h));
        }
    }
    Ok(0)
}

#[cfg(feature = "video")]
fn video_query(engine: &echovault::Engine, p: &std::path::Path) -> anyhow::Result<Vec<f32>> {
    Ok(engine.embed_video_file(p)?.1.video)
}

#[cfg(not(feature = "video"))]
fn video_query(_: &echovault::Engine, p: &std::path::Path) -> anyhow::Result<Vec<f32>> {
    anyhow::bail!("{}: this echovault was built without the `video` feature (FFmpeg)", p.display())
}
