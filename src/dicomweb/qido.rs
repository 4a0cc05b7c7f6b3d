//! QIDO-RS searches: studies (by modality and `StudyDate` range), the series of a study, the
//! instances of a series, each paged with `limit` / `offset`, and [`Walk`], which goes through
//! every instance of the matching studies lazily (one page of studies and one study's instance
//! references in memory).
//!
//! Paging is checked, not trusted: a page is asked for until one comes back empty (a server may
//! answer fewer than `limit` results per page, e.g. a cap of its own). Orthanc 1.10 with
//! `ModalitiesInStudy` counts `limit` from the first match instead of from `offset` (it answers
//! results `offset..limit`), so the second page is always empty there; an empty page at an
//! offset is therefore asked again with `limit = offset + page size`, which a server that pages
//! correctly also answers empty, and if that one is not empty the rest of the search is asked
//! that way. A server that ignores `offset` (the same page twice) is an error, not a loop.

use super::client::Client;
use super::error::{DicomWebError, Target};
use super::{check_uid, Endpoint};
use crate::ingest::Shard;
use echovault_index::StudyDate;
use serde_json::Value;
use std::collections::{HashSet, VecDeque};

/// DICOM JSON keys (group and element, upper-case hex) of the attributes read.
mod tag {
    pub const STUDY_DATE: &str = "00080020";
    pub const MODALITIES_IN_STUDY: &str = "00080061";
    pub const MODALITY: &str = "00080060";
    pub const SOP_INSTANCE_UID: &str = "00080018";
    pub const STUDY_INSTANCE_UID: &str = "0020000D";
    pub const SERIES_INSTANCE_UID: &str = "0020000E";
}

/// Which studies to search for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StudyQuery {
    /// `ModalitiesInStudy` (and the series kept): `US` for echocardiograms; `None`: all.
    pub modality: Option<String>,
    /// First `StudyDate` included.
    pub since: Option<StudyDate>,
    /// Last `StudyDate` included.
    pub until: Option<StudyDate>,
    /// Only the studies of this shard (`ingest --shard`): [`Walk`] passes over the others
    /// before listing their series or instances (see [`Walk::take_other_shard`]).
    pub shard: Option<Shard>,
}

impl Default for StudyQuery {
    fn default() -> Self {
        StudyQuery { modality: Some("US".to_owned()), since: None, until: None, shard: None }
    }
}

impl StudyQuery {
    /// The `StudyDate` range matching value (`YYYYMMDD-YYYYMMDD`, open at either end).
    fn date_range(&self) -> Option<String> {
        let dicom = |d: StudyDate| format!("{:04}{:02}{:02}", d.year(), d.month(), d.day());
        match (self.since, self.until) {
            (None, None) => None,
            (since, until) => Some(format!("{}-{}", since.map(dicom).unwrap_or_default(), until.map(dicom).unwrap_or_default())),
        }
    }

    /// Whether a study the server returned matches (servers that ignore a filter are caught
    /// here; a study without the attribute is kept).
    fn keeps(&self, study: &Value) -> bool {
        if let (Some(m), Some(ms)) = (&self.modality, study.get(tag::MODALITIES_IN_STUDY)) {
            if !values(ms).iter().any(|v| v.as_str().is_some_and(|s| s.eq_ignore_ascii_case(m))) {
                return false;
            }
        }
        match first_string(study, tag::STUDY_DATE).and_then(|d| dicom_date(&d)) {
            Some(d) => self.since.is_none_or(|s| d >= s) && self.until.is_none_or(|u| d <= u),
            None => true,
        }
    }
}

/// A study found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StudyRef {
    /// StudyInstanceUID.
    pub study_uid: String,
    /// StudyDate, when the server returned a valid one.
    pub date: Option<StudyDate>,
}

/// A series found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeriesRef {
    /// StudyInstanceUID.
    pub study_uid: String,
    /// SeriesInstanceUID.
    pub series_uid: String,
    /// Modality, when the server returned it.
    pub modality: Option<String>,
}

/// An instance found: what a retrieval needs.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct InstanceRef {
    /// StudyInstanceUID.
    pub study_uid: String,
    /// SeriesInstanceUID.
    pub series_uid: String,
    /// SOPInstanceUID.
    pub sop_uid: String,
}

impl InstanceRef {
    /// The UIDs, for errors.
    pub fn target(&self) -> Target {
        Target::instance(&self.study_uid, &self.series_uid, &self.sop_uid)
    }

    /// Its WADO-RS URL at `endpoint`.
    pub fn url(&self, endpoint: &Endpoint) -> String {
        endpoint.instance_url(&self.study_uid, &self.series_uid, &self.sop_uid)
    }
}

fn values(attr: &Value) -> &[Value] {
    attr.get("Value").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[])
}

/// The first value of a string attribute.
fn first_string(obj: &Value, tag: &str) -> Option<String> {
    values(obj.get(tag)?).first()?.as_str().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

fn dicom_date(da: &str) -> Option<StudyDate> {
    let d = da.as_bytes();
    if d.len() != 8 || !d.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = |r: std::ops::Range<usize>| da[r].parse::<u32>().ok();
    StudyDate::new(n(0..4)? as i32, n(4..6)? as u8, n(6..8)? as u8).ok()
}

/// A UID attribute that must be there and be usable in a URL.
fn uid(obj: &Value, tag: &str, name: &str, target: &Target, url: &str) -> Result<String, DicomWebError> {
    let bad = |reason: String| DicomWebError::Response { target: Box::new(target.clone()), url: url.to_owned(), reason };
    let uid = first_string(obj, tag).ok_or_else(|| bad(format!("a search result has no {name} ({tag})")))?;
    check_uid(&uid).map_err(|why| bad(format!("{name}: {why}")))?;
    Ok(uid)
}

/// One search, page by page.
#[derive(Debug)]
struct Pager {
    target: Target,
    url: String,
    params: Vec<(&'static str, String)>,
    page_size: usize,
    offset: usize,
    /// The server answers `offset..limit` (Orthanc 1.10 with `ModalitiesInStudy`).
    limit_from_zero: bool,
    /// The first result of the last page, to catch a server that ignores `offset`.
    last_first: Option<Value>,
    done: bool,
}

impl Pager {
    fn new(target: Target, url: String, params: Vec<(&'static str, String)>, page_size: usize) -> Pager {
        Pager { target, url, params, page_size: page_size.max(1), offset: 0, limit_from_zero: false, last_first: None, done: false }
    }

    fn ask(&self, client: &Client, limit: usize) -> Result<Vec<Value>, DicomWebError> {
        let mut q = self.params.clone();
        q.push(("limit", limit.to_string()));
        if self.offset > 0 {
            q.push(("offset", self.offset.to_string()));
        }
        client.qido(&self.target, &self.url, &q)
    }

    /// The next page, `None` after the last.
    fn next_page(&mut self, client: &Client) -> Result<Option<Vec<Value>>, DicomWebError> {
        if self.done {
            return Ok(None);
        }
        let limit = if self.limit_from_zero { self.offset + self.page_size } else { self.page_size };
        let mut page = self.ask(client, limit)?;
        if page.is_empty() && self.offset > 0 && !self.limit_from_zero {
            page = self.ask(client, self.offset + self.page_size)?;
            if !page.is_empty() {
                tracing::debug!("{}: 'limit' counts from the first match", self.url);
                tracing::info!(
                    "the server counts 'limit' of a {} from the first match, not from 'offset' (Orthanc 1.10 does so with ModalitiesInStudy); paging accordingly",
                    self.target.kind()
                );
                self.limit_from_zero = true;
            }
        }
        if page.is_empty() {
            self.done = true;
            return Ok(None);
        }
        if self.offset > 0 && self.last_first.as_ref() == page.first() {
            return Err(DicomWebError::Response {
                target: Box::new(self.target.clone()),
                url: self.url.clone(),
                reason: format!("the page at offset {} repeats the one before: the server ignores 'offset'", self.offset),
            });
        }
        self.last_first = page.first().cloned();
        self.offset += page.len();
        Ok(Some(page))
    }

    /// Every page's results.
    fn all(mut self, client: &Client) -> Result<Vec<Value>, DicomWebError> {
        let mut out = Vec::new();
        while let Some(page) = self.next_page(client)? {
            out.extend(page);
        }
        Ok(out)
    }
}

impl Client {
    fn studies_pager(&self, query: &StudyQuery, with_modality: bool) -> Pager {
        let mut params = Vec::new();
        if let (true, Some(m)) = (with_modality, &query.modality) {
            params.push(("ModalitiesInStudy", m.clone()));
        }
        if let Some(range) = query.date_range() {
            params.push(("StudyDate", range));
        }
        Pager::new(Target::search(), self.endpoint.studies_url(), params, self.options.page_size)
    }

    /// The first page of studies; a server that refuses `ModalitiesInStudy` as a filter (400)
    /// is asked without it and the studies are filtered here.
    fn first_studies_page(&self, query: &StudyQuery) -> Result<(Pager, Option<Vec<Value>>), DicomWebError> {
        let mut pager = self.studies_pager(query, true);
        match pager.next_page(self) {
            Err(e) if e.status() == Some(400) && query.modality.is_some() => {
                tracing::debug!("{e}");
                tracing::warn!("{}: searching without ModalitiesInStudy and filtering the studies here", e.brief());
                let mut pager = self.studies_pager(query, false);
                let page = pager.next_page(self)?;
                Ok((pager, page))
            }
            r => r.map(|page| (pager, page)),
        }
    }

    fn study_refs(&self, query: &StudyQuery, page: Vec<Value>, url: &str) -> Vec<Result<StudyRef, DicomWebError>> {
        page.iter()
            .filter(|s| query.keeps(s))
            .map(|s| {
                let study_uid = uid(s, tag::STUDY_INSTANCE_UID, "StudyInstanceUID", &Target::search(), url)?;
                let date = first_string(s, tag::STUDY_DATE).and_then(|d| dicom_date(&d));
                Ok(StudyRef { study_uid, date })
            })
            .collect()
    }

    /// QIDO-RS: every study matching `query`, all pages.
    pub fn studies(&self, query: &StudyQuery) -> Result<Vec<StudyRef>, DicomWebError> {
        let (mut pager, mut page) = self.first_studies_page(query)?;
        let mut out = Vec::new();
        while let Some(p) = page {
            for s in self.study_refs(query, p, &pager.url) {
                out.push(s?);
            }
            page = pager.next_page(self)?;
        }
        Ok(out)
    }

    /// QIDO-RS: the series of a study, those of `modality` (or without one) if given.
    pub fn series(&self, study_uid: &str, modality: Option<&str>) -> Result<Vec<SeriesRef>, DicomWebError> {
        let target = Target::study(study_uid);
        let url = self.endpoint.series_url(study_uid);
        let found = Pager::new(target.clone(), url.clone(), Vec::new(), self.options.page_size).all(self)?;
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for s in &found {
            let series_uid = uid(s, tag::SERIES_INSTANCE_UID, "SeriesInstanceUID", &target, &url)?;
            let m = first_string(s, tag::MODALITY);
            let wanted = match (modality, &m) {
                (Some(want), Some(have)) => have.eq_ignore_ascii_case(want),
                _ => true,
            };
            if wanted && seen.insert(series_uid.clone()) {
                out.push(SeriesRef { study_uid: study_uid.to_owned(), series_uid, modality: m });
            }
        }
        Ok(out)
    }

    /// QIDO-RS: the instances of a series.
    pub fn instances(&self, study_uid: &str, series_uid: &str) -> Result<Vec<InstanceRef>, DicomWebError> {
        let target = Target::series(study_uid, series_uid);
        let url = self.endpoint.instances_url(study_uid, series_uid);
        let found = Pager::new(target.clone(), url.clone(), Vec::new(), self.options.page_size).all(self)?;
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for i in &found {
            let sop_uid = uid(i, tag::SOP_INSTANCE_UID, "SOPInstanceUID", &target, &url)?;
            if seen.insert(sop_uid.clone()) {
                out.push(InstanceRef { study_uid: study_uid.to_owned(), series_uid: series_uid.to_owned(), sop_uid });
            }
        }
        Ok(out)
    }

    /// QIDO-RS: the instances of a study in one (paged) search, those of `modality` (or
    /// without one) if given; `None` when the server leaves out an instance's
    /// SeriesInstanceUID (the caller then asks series by series).
    pub fn study_instances(&self, study_uid: &str, modality: Option<&str>) -> Result<Option<Vec<InstanceRef>>, DicomWebError> {
        let target = Target::study(study_uid);
        let url = self.endpoint.study_instances_url(study_uid);
        // Modality is a series attribute: a study-wide instance search returns it only if asked.
        let params = vec![("includefield", tag::MODALITY.to_owned())];
        let found = Pager::new(target.clone(), url.clone(), params, self.options.page_size).all(self)?;
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for i in &found {
            if i.get(tag::SERIES_INSTANCE_UID).is_none() {
                return Ok(None);
            }
            let series_uid = uid(i, tag::SERIES_INSTANCE_UID, "SeriesInstanceUID", &target, &url)?;
            let sop_uid = uid(i, tag::SOP_INSTANCE_UID, "SOPInstanceUID", &target, &url)?;
            let wanted = match (modality, first_string(i, tag::MODALITY)) {
                (Some(want), Some(have)) => have.eq_ignore_ascii_case(want),
                _ => true,
            };
            if wanted && seen.insert(sop_uid.clone()) {
                out.push(InstanceRef { study_uid: study_uid.to_owned(), series_uid, sop_uid });
            }
        }
        Ok(Some(out))
    }

    /// Every instance of the studies matching `query`, lazily: studies page by page, then
    /// each study's instances (one search per study; series by series where the server does
    /// not name an instance's series). A study whose series or instances cannot be listed
    /// is one error (naming it) and the walk goes on; a failed page of studies ends it.
    pub fn walk(&self, query: StudyQuery) -> Walk {
        Walk {
            client: self.clone(),
            query,
            pager: None,
            studies: VecDeque::new(),
            ready: VecDeque::new(),
            listed: Vec::new(),
            other_shard: Vec::new(),
            done: false,
            complete: false,
        }
    }
}

/// The instances of a search, study by study (see [`Client::walk`]).
#[derive(Debug)]
pub struct Walk {
    client: Client,
    query: StudyQuery,
    pager: Option<Pager>,
    studies: VecDeque<StudyRef>,
    ready: VecDeque<Result<InstanceRef, DicomWebError>>,
    /// Studies whose series and instances were listed in full, not yet taken.
    listed: Vec<String>,
    /// Studies of other shards passed over unlisted, not yet taken.
    other_shard: Vec<String>,
    done: bool,
    /// Every page of studies was read.
    complete: bool,
}

impl Walk {
    /// The studies listed in full (every series and instance) since the last call: a caller
    /// that keeps failures by study can clear theirs.
    pub fn take_listed(&mut self) -> Vec<String> {
        std::mem::take(&mut self.listed)
    }

    /// The studies of other shards (the query's `shard`) passed over since the last call,
    /// without a search for their series or instances.
    pub fn take_other_shard(&mut self) -> Vec<String> {
        std::mem::take(&mut self.other_shard)
    }

    /// Whether the search went through every page of studies without an error.
    pub fn complete(&self) -> bool {
        self.complete
    }

    fn expand(&mut self, study: &StudyRef) -> Result<(), DicomWebError> {
        if let Some(instances) = self.client.study_instances(&study.study_uid, self.query.modality.as_deref())? {
            self.ready.extend(instances.into_iter().map(Ok));
            return Ok(());
        }
        let series = self.client.series(&study.study_uid, self.query.modality.as_deref())?;
        let mut seen = HashSet::new();
        for s in series {
            for i in self.client.instances(&s.study_uid, &s.series_uid)? {
                if seen.insert(i.sop_uid.clone()) {
                    self.ready.push_back(Ok(i));
                }
            }
        }
        Ok(())
    }

    fn next_studies(&mut self) -> Result<bool, DicomWebError> {
        let page = match &mut self.pager {
            None => {
                let (pager, page) = self.client.first_studies_page(&self.query)?;
                self.pager = Some(pager);
                page
            }
            Some(pager) => pager.next_page(&self.client)?,
        };
        let Some(page) = page else { return Ok(false) };
        let url = self.client.endpoint.studies_url();
        for s in self.client.study_refs(&self.query, page, &url) {
            match s {
                Ok(s) => self.studies.push_back(s),
                Err(e) => self.ready.push_back(Err(e)),
            }
        }
        Ok(true)
    }
}

impl Iterator for Walk {
    type Item = Result<InstanceRef, DicomWebError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(r) = self.ready.pop_front() {
                return Some(r);
            }
            if let Some(study) = self.studies.pop_front() {
                if self.query.shard.is_some_and(|s| !s.owns(&study.study_uid)) {
                    self.other_shard.push(study.study_uid);
                    continue;
                }
                let before = self.ready.len();
                match self.expand(&study) {
                    Ok(()) => self.listed.push(study.study_uid),
                    Err(e) => {
                        // Part of a study is not a study: none of its instances, one error.
                        self.ready.truncate(before);
                        self.ready.push_back(Err(e));
                    }
                }
                continue;
            }
            if self.done {
                return None;
            }
            match self.next_studies() {
                Ok(true) => {}
                Ok(false) => {
                    self.done = true;
                    self.complete = true;
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn day(s: &str) -> StudyDate {
        s.parse().unwrap()
    }

    #[test]
    fn date_ranges_and_client_side_filters() {
        let q = StudyQuery { modality: Some("US".into()), since: Some(day("2018-02-01")), until: None, shard: None };
        assert_eq!(q.date_range().unwrap(), "20180201-");
        let q2 = StudyQuery { until: Some(day("2019-12-31")), ..q.clone() };
        assert_eq!(q2.date_range().unwrap(), "20180201-20191231");
        assert_eq!(StudyQuery::default().date_range(), None);
        let study = |date: &str, modalities: &[&str]| json!({"00080020": {"vr": "DA", "Value": [date]}, "00080061": {"vr": "CS", "Value": modalities}});
        assert!(q2.keeps(&study("20180201", &["US", "SR"])));
        assert!(!q2.keeps(&study("20180131", &["US"])), "before --since");
        assert!(!q2.keeps(&study("20200101", &["US"])), "after --until");
        assert!(!q2.keeps(&study("20190101", &["CT"])), "no US series");
        assert!(q2.keeps(&json!({})), "attributes the server left out do not drop a study");
        assert_eq!(dicom_date("20180229"), None);
        assert_eq!(dicom_date("2018-01-01"), None);
    }

    #[test]
    fn uids_are_read_and_checked() {
        let t = Target::search();
        let ok = json!({"0020000D": {"vr": "UI", "Value": ["1.2.3 "]}});
        assert_eq!(uid(&ok, tag::STUDY_INSTANCE_UID, "StudyInstanceUID", &t, "u").unwrap(), "1.2.3");
        let missing = uid(&json!({}), tag::STUDY_INSTANCE_UID, "StudyInstanceUID", &t, "u").unwrap_err().to_string();
        assert!(missing.contains("no StudyInstanceUID (0020000D)"), "{missing}");
        let evil = json!({"0020000D": {"vr": "UI", "Value": ["1.2/../../x"]}});
        assert!(uid(&evil, tag::STUDY_INSTANCE_UID, "StudyInstanceUID", &t, "u").is_err());
    }
}
