//! Look-ups by patient, study and date through secondary keys (the `lookup` column family, key
//! layouts in `codec::lookup_keys`): a patient's timeline or a study's items read only their
//! own keys and records, never every record.
//!
//! The keys are written in the same WriteBatch as the records they index ([`Index::commit`]
//! removes a replaced or deleted record's old keys), rebuilt by [`Index::repair`] and checked by
//! [`Index::verify`]. An index from before them gains them on its first writer open; until
//! then (a reader or a passive open of such an index) look-ups scan the records instead.

use crate::codec::{self, Collection};
use crate::date::StudyDate;
use crate::error::IndexError;
use crate::graph::Graph;
use crate::ids::{ItemId, Kind, Slot};
use crate::index::{corrupt, Index};
use crate::record::ItemRecord;
use crate::search::Filter;
use crate::store::{self, CF_ITEMS, CF_LOOKUP, CF_META, CF_SLOTS};
use rocksdb::{IteratorMode, WriteBatch};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::Ordering;

/// Records per WriteBatch when the keys are rebuilt: bounds the memory of a rebuild of a large
/// index (≈ 3 keys of ≈ 100 bytes per record).
const REBUILD_CHUNK: usize = 50_000;

/// The `lookup` keys of `rec`, each with its value (the kind code).
pub(crate) fn keys_of(rec: &ItemRecord) -> impl Iterator<Item = (Vec<u8>, [u8; 1])> {
    let kind = [rec.kind.code()];
    codec::lookup_keys(rec.patient.as_deref(), rec.study.as_deref(), rec.date, &rec.id.0).into_iter().map(move |k| (k, kind))
}

/// Adds to `wb` the key changes of one item going from `old` to `new` (either may be absent).
pub(crate) fn rewrite_keys(wb: &mut WriteBatch, cf: &rocksdb::ColumnFamily, old: Option<&ItemRecord>, new: Option<&ItemRecord>) {
    // Deletes first: a key both old and new ends up put.
    for (k, _) in old.into_iter().flat_map(keys_of) {
        wb.delete_cf(cf, k);
    }
    for (k, v) in new.into_iter().flat_map(keys_of) {
        wb.put_cf(cf, k, v);
    }
}

impl Index {
    /// Adds to `wb` the secondary-key changes of a commit that puts `records` and deletes
    /// `deleted`: the keys of the records they replace or delete go, theirs come.
    pub(crate) fn lookup_changes(
        &self,
        wb: &mut WriteBatch,
        records: &HashMap<ItemId, ItemRecord>,
        deleted: &HashSet<ItemId>,
    ) -> Result<(), IndexError> {
        let cf = self.cf(CF_LOOKUP)?;
        let ids: Vec<ItemId> = records.keys().chain(deleted).cloned().collect();
        for (id, old) in ids.iter().zip(self.get_items(&ids)?) {
            rewrite_keys(wb, cf, old.as_ref(), records.get(id));
        }
        Ok(())
    }

    /// Every record of `patient` (any kind), by study date, then id; undated ones last.
    pub fn items_by_patient(&self, patient: &str) -> Result<Vec<ItemRecord>, IndexError> {
        if !self.lookups_ready() {
            let mut recs = self.scan(|r| r.patient.as_deref() == Some(patient))?;
            recs.sort_by(|a, b| (a.date.is_none(), a.date, &a.id).cmp(&(b.date.is_none(), b.date, &b.id)));
            return Ok(recs);
        }
        let prefix = codec::patient_prefix(patient);
        let ids = self.ids_under(&prefix, |k| codec::patient_key_item(k, prefix.len()))?;
        self.records_of(&ids)
    }

    /// Every record of `study` (any kind), by id.
    pub fn items_by_study(&self, study: &str) -> Result<Vec<ItemRecord>, IndexError> {
        if !self.lookups_ready() {
            let mut recs = self.scan(|r| r.study.as_deref() == Some(study))?;
            recs.sort_by(|a, b| a.id.cmp(&b.id));
            return Ok(recs);
        }
        let prefix = codec::study_prefix(study);
        let ids = self.ids_under(&prefix, |k| codec::study_key_item(k, prefix.len()))?;
        self.records_of(&ids)
    }

    /// Records dated from `since` to `until` (both included; `None` = unbounded), of `kind` when
    /// given, by date, then id. Undated records are never returned.
    pub fn items_by_date(
        &self,
        since: Option<StudyDate>,
        until: Option<StudyDate>,
        kind: Option<Kind>,
    ) -> Result<Vec<ItemRecord>, IndexError> {
        let inside = |d: StudyDate| since.is_none_or(|s| d >= s) && until.is_none_or(|u| d <= u);
        if !self.lookups_ready() {
            let mut recs = self.scan(|r| r.date.is_some_and(inside) && kind.is_none_or(|k| r.kind == k))?;
            recs.sort_by(|a, b| (a.date, &a.id).cmp(&(b.date, &b.id)));
            return Ok(recs);
        }
        let start = since.map_or_else(|| vec![codec::DATES], codec::date_prefix);
        let cf = self.cf(CF_LOOKUP)?;
        let mut ids = Vec::new();
        for kv in self.db.iterator_cf(cf, IteratorMode::From(&start, rocksdb::Direction::Forward)) {
            let (k, v) = kv.map_err(|e| self.storage(e))?;
            if k.first() != Some(&codec::DATES) {
                break;
            }
            let (d, item) = codec::decode_date_key(&k).ok_or_else(|| corrupt(&self.path, "date key", format!("{k:?}")))?;
            if until.is_some_and(|u| d > u) {
                break;
            }
            if kind.is_none_or(|kind| v.first() == Some(&kind.code())) {
                ids.push(ItemId::from(item));
            }
        }
        self.records_of(&ids)
    }

    /// The distinct patient keys of the index, sorted. Reads one key per patient.
    pub fn patients(&self) -> Result<Vec<String>, IndexError> {
        if !self.lookups_ready() {
            let set: BTreeSet<String> = self.scan(|r| r.patient.is_some())?.into_iter().filter_map(|r| r.patient).collect();
            return Ok(set.into_iter().collect());
        }
        let mut out = Vec::new();
        let mut it = self.db.raw_iterator_cf(self.cf(CF_LOOKUP)?);
        it.seek([codec::PATIENTS]);
        while let Some(k) = it.key() {
            if k.first() != Some(&codec::PATIENTS) {
                break;
            }
            let p = codec::decode_patient_key(k).ok_or_else(|| corrupt(&self.path, "patient key", format!("{k:?}")))?.to_owned();
            // Skip this patient's other keys: seek past every key under its prefix.
            let Some(next) = codec::prefix_end(&codec::patient_prefix(&p)) else { break };
            out.push(p);
            it.seek(next);
        }
        it.status().map_err(|e| self.storage(e))?;
        out.sort();
        Ok(out)
    }

    /// The distinct studies of `patient`, sorted.
    pub fn studies_of_patient(&self, patient: &str) -> Result<Vec<String>, IndexError> {
        let set: BTreeSet<String> = self.items_by_patient(patient)?.into_iter().filter_map(|r| r.study).collect();
        Ok(set.into_iter().collect())
    }

    /// The live slots of `g` (collection `c`) passing `filter`, in slot order. A patient or
    /// study filter starts from that patient's or study's keys (a few reads, whatever the size
    /// of the collection); other filters test every slot's facts in memory. The graph's facts
    /// decide: a key whose slot is not live there (a reader between catch-up and reveal) is
    /// left out.
    pub(crate) fn candidates(&self, g: &Graph, c: Collection, filter: &Filter) -> Result<Vec<Slot>, IndexError> {
        let prefix = match (&filter.patient, &filter.study) {
            _ if !self.lookups_ready() => return Ok(g.candidates(filter)),
            (Some(p), _) => codec::patient_prefix(p),
            (None, Some(s)) => codec::study_prefix(s),
            (None, None) => return Ok(g.candidates(filter)),
        };
        let mut ids = Vec::new();
        for kv in self.db.prefix_iterator_cf(self.cf(CF_LOOKUP)?, &prefix) {
            let (k, v) = kv.map_err(|e| self.storage(e))?;
            if !k.starts_with(&prefix) {
                break;
            }
            if v.first() == Some(&c.kind.code()) {
                let item = if filter.patient.is_some() {
                    codec::patient_key_item(&k, prefix.len())
                } else {
                    codec::study_key_item(&k, prefix.len())
                };
                let item = item.ok_or_else(|| corrupt(&self.path, "lookup key", format!("{k:?}")))?;
                ids.push(codec::slot_key(c, item));
            }
        }
        let cf = self.cf(CF_SLOTS)?;
        let mut slots = Vec::with_capacity(ids.len());
        for r in self.db.multi_get_cf(ids.iter().map(|k| (cf, k.as_slice()))) {
            let Some(b) = r.map_err(|e| self.storage(e))? else { continue };
            let s = Slot(u32::from_be_bytes(b.as_slice().try_into().map_err(|_| corrupt(&self.path, "slot", "not 4 bytes"))?));
            if g.meta(s).is_some_and(|m| m.matches(filter)) {
                slots.push(s);
            }
        }
        slots.sort_unstable();
        slots.dedup();
        Ok(slots)
    }

    /// True when the secondary keys are complete (see the module header).
    pub(crate) fn lookups_ready(&self) -> bool {
        self.lookups.load(Ordering::Acquire)
    }

    /// Whether the stored keys are complete, read from `meta`.
    pub(crate) fn read_lookups_ready(&self) -> Result<bool, IndexError> {
        let v = self.db.get_cf(self.cf(CF_META)?, store::KEY_LOOKUP_VERSION).map_err(|e| self.storage(e))?;
        Ok(v.is_some_and(|v| v.as_slice() == store::LOOKUP_VERSION.to_be_bytes()) && self.db.cf_handle(CF_LOOKUP).is_some())
    }

    /// Item ids of the keys under `prefix`, in key order (the item id read by `item`).
    fn ids_under(&self, prefix: &[u8], item: impl Fn(&[u8]) -> Option<&str>) -> Result<Vec<ItemId>, IndexError> {
        let mut ids = Vec::new();
        for kv in self.db.prefix_iterator_cf(self.cf(CF_LOOKUP)?, prefix) {
            let (k, _) = kv.map_err(|e| self.storage(e))?;
            if !k.starts_with(prefix) {
                break;
            }
            ids.push(ItemId::from(item(&k).ok_or_else(|| corrupt(&self.path, "lookup key", format!("{k:?}")))?));
        }
        Ok(ids)
    }

    /// The records of `ids`, in order; an id whose record is gone (a key that only damage
    /// leaves behind, which `verify` reports) is skipped.
    fn records_of(&self, ids: &[ItemId]) -> Result<Vec<ItemRecord>, IndexError> {
        Ok(self.get_items(ids)?.into_iter().flatten().collect())
    }

    /// Every record passing `keep` (the fallback of an index without its keys).
    fn scan(&self, keep: impl Fn(&ItemRecord) -> bool) -> Result<Vec<ItemRecord>, IndexError> {
        Ok(self.items(None)?.into_iter().filter(|r| keep(r)).collect())
    }

    /// Rebuilds every secondary key from the records: marks the keys incomplete and clears
    /// them, writes them in chunks, then marks them complete. A crash part-way leaves them
    /// marked incomplete, and the next writer open starts again.
    pub(crate) fn rebuild_lookups(&self) -> Result<(), IndexError> {
        self.writable("rebuilding the secondary keys")?;
        let (cf, cf_meta) = (self.cf(CF_LOOKUP)?, self.cf(CF_META)?);
        self.lookups.store(false, Ordering::Release);
        let mut wb = WriteBatch::default();
        wb.delete_cf(cf_meta, store::KEY_LOOKUP_VERSION);
        wb.delete_range_cf(cf, [0u8].as_slice(), [0xffu8].as_slice());
        self.db.write(wb).map_err(|e| self.storage(e))?;
        let mut wb = WriteBatch::default();
        let mut n = 0usize;
        for kv in self.db.iterator_cf(self.cf(CF_ITEMS)?, IteratorMode::Start) {
            let (_, v) = kv.map_err(|e| self.storage(e))?;
            let rec = self.decode_record(&v)?;
            rewrite_keys(&mut wb, cf, None, Some(&rec));
            n += 1;
            if n % REBUILD_CHUNK == 0 {
                self.db.write(std::mem::take(&mut wb)).map_err(|e| self.storage(e))?;
            }
        }
        wb.put_cf(cf_meta, store::KEY_LOOKUP_VERSION, store::LOOKUP_VERSION.to_be_bytes());
        self.db.write_opt(wb, &crate::index::synced()).map_err(|e| self.storage(e))?;
        self.lookups.store(true, Ordering::Release);
        tracing::info!(records = n, "secondary keys (patient, study, date) rebuilt");
        Ok(())
    }

    /// Problems with the secondary keys: missing, stale or wrong ones (one line each, at most
    /// `limit`, then a count).
    pub(crate) fn verify_lookups(&self, limit: usize) -> Result<Vec<String>, IndexError> {
        if !self.read_lookups_ready()? {
            return Ok(vec!["the secondary keys (patient, study, date) are missing or incomplete: \
                            the next `echovault ingest` or `echovault repair` builds them"
                .into()]);
        }
        let mut expected: Vec<(Vec<u8>, [u8; 1])> = Vec::new();
        for kv in self.db.iterator_cf(self.cf(CF_ITEMS)?, IteratorMode::Start) {
            let (_, v) = kv.map_err(|e| self.storage(e))?;
            expected.extend(keys_of(&self.decode_record(&v)?));
        }
        expected.sort();
        let mut problems = Vec::new();
        let mut more = 0usize;
        let mut report = |line: String| {
            if problems.len() < limit {
                problems.push(line);
            } else {
                more += 1;
            }
        };
        let mut want = expected.into_iter().peekable();
        for kv in self.db.iterator_cf(self.cf(CF_LOOKUP)?, IteratorMode::Start) {
            let (k, v) = kv.map_err(|e| self.storage(e))?;
            while let Some((w, _)) = want.next_if(|(w, _)| w.as_slice() < k.as_ref()) {
                report(format!("secondary key missing: {}", describe(&w)));
            }
            match want.next_if(|(w, _)| w.as_slice() == k.as_ref()) {
                Some((_, wv)) if wv.as_slice() == v.as_ref() => {}
                Some(_) => report(format!("secondary key with the wrong kind: {}", describe(&k))),
                None => report(format!("stale secondary key (no record has it): {}", describe(&k))),
            }
        }
        for (w, _) in want {
            report(format!("secondary key missing: {}", describe(&w)));
        }
        if more > 0 {
            problems.push(format!("… and {more} more secondary-key problems"));
        }
        Ok(problems)
    }
}

/// A secondary key in words, for `verify`'s problem lines.
fn describe(k: &[u8]) -> String {
    if let Some(p) = codec::decode_patient_key(k) {
        let item = codec::patient_key_item(k, codec::patient_prefix(p).len()).unwrap_or("?");
        return format!("patient {p}, item {item}");
    }
    if let Some((d, item)) = codec::decode_date_key(k) {
        return format!("date {d}, item {item}");
    }
    if let Some(s) = codec::decode_study_key(k) {
        let item = codec::study_key_item(k, codec::study_prefix(s).len()).unwrap_or("?");
        return format!("study {s}, item {item}");
    }
    format!("{k:?}")
}
