//! The task library calls read what they need through the index's keys, not every record:
//! a timeline decodes only its patient's records, a file's look-up one record, transitions only
//! the dated studies. Results are checked against values the test computes itself.

#![allow(clippy::unwrap_used)]

mod common;

use echovault::engine::Embedder;
use echovault::index::{Index, IndexOptions, ItemRecord, Kind, StudyDate};
use echovault::media::{ChannelOrder, FrameSampling};
use echovault::tasks::context::TaskContext;
use echovault::tasks::eval::{eval_transitions, EvalTransitionsRequest};
use echovault::tasks::timeline::{timeline, TimelineRequest};
use rand::{rngs::StdRng, Rng, SeedableRng};

const DIM: usize = 64;
const PATIENTS: usize = 300;
const STUDIES_PER_PATIENT: usize = 6;
const VIDEOS_PER_STUDY: usize = 3;

fn unit(rng: &mut StdRng) -> Vec<f32> {
    let v: Vec<f32> = (0..DIM).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum()
}

#[test]
fn timeline_lookup_and_transitions_read_only_their_records() {
    let tmp = tempfile::tempdir().unwrap();
    let index = Index::open(tmp.path().join("idx"), IndexOptions::default()).unwrap();
    let space = index.ensure_space("echovault-tiny", DIM).unwrap();
    let mut rng = StdRng::seed_from_u64(3);
    // Patient p's study s is dated 2015-01-01 + 50·s + p days; study vectors random.
    let base = StudyDate::new(2015, 1, 1).unwrap().days_since_epoch();
    let mut study_vectors = Vec::new();
    let mut b = index.batch();
    for p in 0..PATIENTS {
        for s in 0..STUDIES_PER_PATIENT {
            let study = format!("p{p}-s{s}");
            let date = StudyDate::from_days_since_epoch(base + 50 * s as i64 + p as i64).unwrap();
            let mut r = ItemRecord::new(format!("study:{study}"), Kind::Study, "manifest");
            (r.study, r.patient, r.date) = (Some(study.clone()), Some(format!("P{p}")), Some(date));
            let v = unit(&mut rng);
            b.put_item(r);
            b.put_vector(space, format!("study:{study}"), Kind::Study, v.clone());
            study_vectors.push(((p, s), v));
            for k in 0..VIDEOS_PER_STUDY {
                let id = format!("{study}-v{k}");
                let mut r = ItemRecord::new(id.clone(), Kind::Video, format!("/archive/{id}.dcm"));
                (r.study, r.patient, r.date) = (Some(study.clone()), Some(format!("P{p}")), Some(date));
                b.put_item(r);
                b.put_vector(space, id, Kind::Video, unit(&mut rng));
            }
        }
    }
    // One video ingested from a real file, named by its content id as ingest names it.
    let file = tmp.path().join("a4c.avi");
    std::fs::write(&file, b"not really a video, but content").unwrap();
    let id = echovault::ingest::content_id(&file).unwrap();
    let mut r = ItemRecord::new(id.clone(), Kind::Video, file.display().to_string());
    r.patient = Some("P7".into());
    b.put_item(r);
    b.put_vector(space, id.clone(), Kind::Video, unit(&mut rng));
    index.commit(b).unwrap();
    let total = PATIENTS * STUDIES_PER_PATIENT * (1 + VIDEOS_PER_STUDY) + 1;

    let mut embedder =
        Embedder::load(&common::root().join("data-samples/echovault-tiny"), None, tch::Device::Cpu, ChannelOrder::Bgr, 8).unwrap();
    embedder.space = space;
    embedder.space_name = "echovault-tiny".into();
    let ctx = TaskContext {
        embedder: &embedder,
        index: Some(&index),
        video_frames: FrameSampling::ALL,
        read: echovault::media::ReadOptions::new(FrameSampling::ALL),
    };

    // Timeline of patient 7: its studies in date order, each against the previous one.
    let before = index.records_decoded();
    let t = timeline(&ctx, &TimelineRequest { patient: Some("P7".into()), ..TimelineRequest::default() }).unwrap();
    let decoded = index.records_decoded() - before;
    let own = STUDIES_PER_PATIENT * (1 + VIDEOS_PER_STUDY) + 1;
    assert!(decoded <= own as u64, "timeline decoded {decoded} records; the patient has {own} of {total}");
    let want: Vec<&Vec<f32>> = study_vectors.iter().filter(|((p, _), _)| *p == 7).map(|(_, v)| v).collect();
    assert_eq!(t.studies.len(), STUDIES_PER_PATIENT);
    for (s, row) in t.studies.iter().enumerate() {
        assert_eq!(row.study.as_deref(), Some(format!("p7-s{s}").as_str()));
        assert_eq!(row.date.unwrap().days_since_epoch(), base + 50 * s as i64 + 7);
        match s {
            0 => assert!(row.similarity.is_none() && row.reference.is_none()),
            _ => {
                assert!((row.similarity.unwrap() - dot(want[s - 1], want[s])).abs() < 1e-6);
                assert_eq!(row.reference, t.studies[s - 1].date);
            }
        }
    }
    let json = serde_json::to_value(&t).unwrap();
    assert_eq!((json["patient"].as_str(), json["undated"].as_u64(), json["space"].as_str()), (Some("P7"), Some(0), Some("echovault-tiny")));
    assert_eq!(json["studies"][1]["date"], "2015-02-27");

    // A file's look-up reads its own record, not every video's.
    let src = ctx.source(FrameSampling::ZERO_SHOT);
    let before = index.records_decoded();
    let found = src.lookup(&file).unwrap().unwrap();
    assert_eq!((found.id.0.as_str(), index.records_decoded() - before), (id.as_str(), 1));
    let copy = tmp.path().join("copy.avi");
    std::fs::copy(&file, &copy).unwrap();
    assert!(src.lookup(&copy).unwrap().is_none(), "same content at another path is not the indexed file");
    std::fs::write(&file, b"changed since it was ingested").unwrap();
    assert!(src.lookup(&file).unwrap().is_none(), "a changed file is read, not taken from the index");

    // Transitions over the index's studies decode the dated studies only, never the videos.
    let events = tmp.path().join("events.jsonl");
    std::fs::write(&events, "{\"patient\":\"P3\",\"date\":\"2015-03-01\",\"event\":\"valve_replacement\"}\n").unwrap();
    let before = index.records_decoded();
    let r = eval_transitions(
        &ctx,
        &EvalTransitionsRequest { manifest: events, studies: None, window: 200, resamples: 20, seed: 1, dump_inputs: false },
    )
    .unwrap();
    let decoded = index.records_decoded() - before;
    assert!(decoded <= (PATIENTS * STUDIES_PER_PATIENT) as u64, "transitions decoded {decoded} records of {total}");
    let v = serde_json::to_value(&r).unwrap();
    // Patient 3's studies lie 3, 53, 103, 153, 203 and 253 days after 2015-01-01, all within
    // 200 days of the event (day 59): the first, before it, is the reference; the other five are
    // scored (one before the event, four after).
    assert_eq!((v["studies"].as_u64(), v["events"].as_u64(), v["events_scored"].as_u64()), (Some(1800), Some(1), Some(1)));
    assert_eq!((&v["rows"][0]["task"], &v["rows"][0]["n"]), (&"valve_replacement".into(), &5.into()));
}
