//! Damage: every table file read with its block checksums verified ([`check_tables`], what
//! `repair --check` reports), and the salvage of a damaged database ([`salvage`], the first step
//! of `repair`): RocksDB's own repair where the database does not open, then each damaged column
//! family rewritten from the keys that still read back, and the index-wide values in `meta`
//! that can be derived (format version, slot counters, space records) put back.
//!
//! What cannot be read is gone; `Index::repair` then makes graphs, slots and secondary keys agree
//! with what survived, and the caller (the ingest log's owner) forgets the inputs whose items
//! were lost, so that the next ingest embeds them again.

use crate::codec::{self, Collection};
use crate::error::IndexError;
use crate::ids::SpaceId;
use crate::index::SpaceInfo;
use crate::store::{self, column_family_role, CF_GRAPH, CF_ITEMS, CF_META, CF_VECTORS, COLUMN_FAMILIES};
use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch, DB};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A table file that failed its check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DamagedTable {
    /// The column family it belongs to.
    pub column_family: String,
    /// Its file name in the index directory (e.g. `000012.sst`).
    pub file: String,
    /// What failed (RocksDB's words, or a size that does not match the MANIFEST).
    pub detail: String,
    /// What losing it means to the user.
    pub meaning: &'static str,
    /// About how many of the file's entries do not read back (its entry count less the keys
    /// of its range that still read, with their checksums, from it or an overlapping table);
    /// `None` for a file that is missing or cut short.
    pub unreadable: Option<u64>,
    /// Entries the file holds, as the MANIFEST says (0 where it could not be read).
    pub entries: u64,
    /// The file's first and last key (printable: other bytes as `\xNN`), from the MANIFEST.
    pub range: Option<[String; 2]>,
    /// For a missing or cut file, what it held, counted from the tables that survive (e.g.
    /// "6 videos' frame embeddings (space 1) lost"), where that can be counted.
    pub lost: Option<String>,
}

impl DamagedTable {
    /// One line for a person: the file, its column family, how much of it is lost, what it
    /// holds and what that means.
    pub fn describe(&self) -> String {
        let mut lost = match (self.unreadable, self.entries) {
            (Some(n), _) => format!("about {n} of its {} entries unreadable", self.entries),
            (None, 0) => "unreadable".to_owned(),
            (None, n) => format!("all {n} of its entries unreadable"),
        };
        if let Some([a, b]) = &self.range {
            lost.push_str(&format!(", keys {a} to {b}"));
        }
        if let Some(l) = &self.lost {
            lost.push_str(&format!(": {l}"));
        }
        format!("table {} of `{}` is damaged, {lost} ({}): {}", self.file, self.column_family, self.detail, self.meaning)
    }
}

/// One column family that [`salvage`] rewrote from its readable keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rewritten {
    /// The column family.
    pub column_family: String,
    /// Keys read back and written again.
    pub kept: usize,
    /// Keys seen in damaged blocks (read without checksums) and not kept.
    pub lost: usize,
    /// Some blocks could not be read even without checksums: an unknown number of keys more
    /// were lost.
    pub unreadable_blocks: bool,
}

/// What [`salvage`] found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Salvage {
    /// Why the database did not open when only its write-ahead log was damaged: the records
    /// that read back were kept, the damaged ones (and the batches they held) are gone.
    pub wal_damaged: Option<String>,
    /// Why the database did not open, when it did not even with the damaged write-ahead-log
    /// records skipped: RocksDB's repair then rebuilt it from its table files (data that was
    /// only in the write-ahead log is lost with it: RocksDB's repair keeps only the default
    /// column family's).
    pub rocksdb_repair: Option<String>,
    /// Committed batches the write-ahead log no longer held (it was cut: at a record boundary,
    /// or in a record), as the sequence mark the writer keeps beside it says; their ingest-log
    /// entries went with them, so the next ingest embeds those inputs again.
    pub rolled_back: Option<String>,
    /// Files RocksDB's repair set aside under `lost/` (their contents are gone).
    pub set_aside: Vec<String>,
    /// Table files that failed their check once the database opened.
    pub damaged: Vec<DamagedTable>,
    /// Column families rewritten from their readable keys.
    pub rewritten: Vec<Rewritten>,
    /// Index-wide values of `meta` that were lost, and what was put back, one line each.
    pub meta: Vec<String>,
    /// An earlier salvage was interrupted (killed): this one finished or redid it.
    pub resumed: bool,
}

impl Salvage {
    /// True when nothing was damaged at the storage level.
    pub fn clean(&self) -> bool {
        self.wal_damaged.is_none()
            && self.rolled_back.is_none()
            && self.rocksdb_repair.is_none()
            && self.set_aside.is_empty()
            && self.damaged.is_empty()
            && self.meta.is_empty()
            && !self.resumed
    }
}

fn verified() -> ReadOptions {
    let mut ro = ReadOptions::default();
    ro.set_verify_checksums(true);
    ro.fill_cache(false);
    ro
}

fn unverified() -> ReadOptions {
    let mut ro = ReadOptions::default();
    ro.set_verify_checksums(false);
    ro.fill_cache(false);
    ro
}

/// The table file a RocksDB error names (`…/000012.sst …` → `000012.sst`).
fn table_named(text: &str) -> Option<String> {
    let end = text.find(".sst")?;
    let digits = text[..end].bytes().rev().take_while(u8::is_ascii_digit).count();
    (digits > 0).then(|| text[end - digits..end + 4].to_owned())
}

/// The smallest key after `k`.
fn after(k: &[u8]) -> Vec<u8> {
    let mut v = k.to_vec();
    v.push(0);
    v
}

/// Reads every live table file of `db` (the index at `path`) with block checksums verified, and
/// checks each file's size on disk against the MANIFEST. Each damaged file is listed once;
/// a file whose whole key range is shadowed by another damaged file's failing blocks can go
/// unlisted until that one is salvaged.
pub fn check_tables(db: &DB, path: &Path) -> Result<Vec<DamagedTable>, IndexError> {
    let storage = |source| IndexError::Storage { path: path.to_owned(), source };
    let live = db.live_files().map_err(storage)?;
    let mut found: BTreeMap<String, DamagedTable> = BTreeMap::new();
    let mut note = |cf: &str, file: String, detail: String| {
        found.entry(file.clone()).or_insert(DamagedTable {
            column_family: cf.to_owned(),
            file,
            detail,
            meaning: column_family_role(cf),
            unreadable: None,
            entries: 0,
            range: None,
            lost: None,
        });
    };
    for f in &live {
        let name = f.name.trim_start_matches('/').to_owned();
        match std::fs::metadata(path.join(&name)) {
            Err(e) => note(&f.column_family_name, name, format!("cannot be read: {e}")),
            Ok(m) if m.len() != f.size as u64 => {
                note(&f.column_family_name, name, format!("{} bytes on disk, the MANIFEST says {}", m.len(), f.size))
            }
            Ok(_) => {}
        }
    }
    for cf_name in COLUMN_FAMILIES {
        let Some(cf) = db.cf_handle(cf_name) else { continue };
        let mut from: Option<Vec<u8>> = None;
        loop {
            let mode = match &from {
                Some(k) => IteratorMode::From(k, Direction::Forward),
                None => IteratorMode::Start,
            };
            let Some(e) = db.iterator_cf_opt(cf, verified(), mode).find_map(Result::err) else { break };
            let text = e.to_string();
            let Some(file) = table_named(&text) else {
                note(cf_name, format!("a table of `{cf_name}`"), text);
                break;
            };
            let end = live.iter().find(|f| f.name.trim_start_matches('/') == file).and_then(|f| f.end_key.clone());
            let owner =
                live.iter().find(|f| f.name.trim_start_matches('/') == file).map_or(cf_name, |f| f.column_family_name.as_str()).to_owned();
            note(&owner, file, text);
            // Go on after the damaged file's key range: other files may be damaged too.
            let Some(next) = end.map(|k| after(&k)) else { break };
            if from.as_ref().is_some_and(|f| *f >= next) {
                break;
            }
            from = Some(next);
        }
    }
    // How much of each damaged (but present, whole) file is lost.
    let mut out: Vec<DamagedTable> = found.into_values().collect();
    for d in &mut out {
        let Some(f) = live.iter().find(|f| f.name.trim_start_matches('/') == d.file) else { continue };
        d.entries = f.num_entries;
        if let (Some(a), Some(b)) = (&f.start_key, &f.end_key) {
            d.range = Some([printable(a), printable(b)]);
            if d.detail.contains("bytes on disk") || d.detail.starts_with("cannot be read") {
                d.lost = held(db, &d.column_family, a, b);
            }
        }
    }
    for cf_name in COLUMN_FAMILIES {
        if !out.iter().any(|d| d.column_family == cf_name && !d.detail.contains("bytes on disk") && !d.detail.starts_with("cannot be read"))
        {
            continue;
        }
        // Each damaged file's range, and how many keys of it read back (streamed: nothing held).
        let mut ranges: Vec<(usize, Vec<u8>, Vec<u8>, u64)> = Vec::new();
        for (i, d) in out.iter().enumerate().filter(|(_, d)| d.column_family == cf_name) {
            let Some(f) = live.iter().find(|f| f.name.trim_start_matches('/') == d.file) else { continue };
            if d.detail.contains("bytes on disk") || d.detail.starts_with("cannot be read") {
                continue;
            }
            ranges.push((i, f.start_key.clone().unwrap_or_default(), f.end_key.clone().unwrap_or_default(), 0));
        }
        survivors(db, cf_name, path, &mut |k, _| {
            for (_, lo, hi, n) in &mut ranges {
                *n += u64::from(k >= lo.as_slice() && k <= hi.as_slice());
            }
            Ok(())
        })?;
        for (i, _, _, read) in ranges {
            let d = &mut out[i];
            let Some(f) = live.iter().find(|f| f.name.trim_start_matches('/') == d.file) else { continue };
            d.unreadable = Some(f.num_entries.saturating_sub(f.num_deletions).saturating_sub(read));
        }
    }
    Ok(out)
}

/// A key for a person: printable ASCII as is, other bytes as `\xNN`, at most 64 bytes shown.
fn printable(k: &[u8]) -> String {
    let mut out = String::new();
    for &b in k.iter().take(64) {
        if b.is_ascii_graphic() && b != b'\\' {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    if k.len() > 64 {
        out.push('…');
    }
    out
}

/// What a missing or cut table of `cf` with keys `lo..=hi` held, counted from the item-to-slot
/// mappings (`slots`: collection + item id → slot) that still read back: the videos whose
/// frame embeddings, the items whose vectors or records, fell in its range. `None` where the
/// column family's loss is not counted that way (the table's entry count and role say it).
fn held(db: &DB, cf: &str, lo: &[u8], hi: &[u8]) -> Option<String> {
    let slots = db.cf_handle(store::CF_SLOTS)?;
    let mappings = || {
        db.iterator_cf_opt(slots, verified(), IteratorMode::Start)
            .map_while(Result::ok)
            .filter_map(|(k, v)| Some((Collection::from_prefix(&k)?, k[3..].to_vec(), <[u8; 4]>::try_from(&*v).ok()?)))
    };
    let within = |k: &[u8]| k >= lo && k <= hi;
    match cf {
        store::CF_FRAMES => {
            let mut spaces = BTreeSet::new();
            let n = mappings()
                .filter(|(c, id, _)| c.kind == crate::Kind::Video && within(&codec::frames_key(c.space, &String::from_utf8_lossy(id))))
                .inspect(|(c, _, _)| {
                    spaces.insert(c.space.0);
                })
                .count();
            let spaces: Vec<String> = spaces.iter().map(u16::to_string).collect();
            Some(format!("{n} videos' frame embeddings (space {}) lost", spaces.join(", ")))
        }
        CF_VECTORS => {
            let n = mappings().filter(|(c, _, slot)| within(&codec::vector_key(*c, crate::Slot(u32::from_be_bytes(*slot))))).count();
            Some(format!("{n} items' vectors lost"))
        }
        CF_ITEMS => {
            let ids: BTreeSet<Vec<u8>> = mappings().map(|(_, id, _)| id).filter(|id| within(id)).collect();
            Some(format!("{} items' records lost (counted from their vectors' mappings)", ids.len()))
        }
        _ => None,
    }
}

/// [`check_tables`] on the index at `path`, opened read-only (nothing written under `path`,
/// RocksDB's info log kept outside it), so that it works where the index itself does not open
/// (a damaged `meta` table) and beside a writer. A database that does not open at all is
/// [`IndexError::Damaged`], saying why.
pub fn check_storage(path: &Path) -> Result<Vec<DamagedTable>, IndexError> {
    let (db, _logs) = open_for_check(path)?;
    check_tables(&db, path)
}

/// The database at `path` opened read-only with every column family it has (an older index
/// lacks the newer ones), RocksDB's info log in a scratch directory outside it (kept alive
/// with the database: the second of the pair).
fn open_for_check(path: &Path) -> Result<(DB, tempfile::TempDir), IndexError> {
    if store::preflight(path)? == store::Presence::Empty {
        return Err(IndexError::Missing { path: path.to_owned() });
    }
    let logs = store::scratch_outside("echovault-check-")?;
    let present = DB::list_cf(&rocksdb::Options::default(), path).map_err(|e| store::open_error(path, e))?;
    let cfs: Vec<&str> = present.iter().map(String::as_str).collect();
    let db = store::open_read_only_unchecked(path, &cfs, logs.path())?;
    Ok((db, logs))
}

/// The table files of the index at `path` with their column family (read-only, as
/// [`check_storage`]), in column-family order.
pub fn table_files(path: &Path) -> Result<Vec<(String, String)>, IndexError> {
    let (db, _logs) = open_for_check(path)?;
    let live = db.live_files().map_err(|e| store::open_error(path, e))?;
    let mut out: Vec<(String, String)> =
        live.into_iter().map(|f| (f.column_family_name, f.name.trim_start_matches('/').to_owned())).collect();
    out.sort();
    Ok(out)
}

/// The keys starting with `prefix` that the write-ahead-log files of the index at `path` put,
/// read leniently (no checksum verified, a damaged record read as far as its bytes go): what a
/// damaged or cut log held, found before a salvage replays (and then deletes) it. The caller
/// compares them with what survived: e.g. the ingest log's `file:` entries of batches a
/// damaged record lost, whose inputs the next ingest embeds again. Keys that are not UTF-8 are
/// left out.
pub fn wal_keys(path: &Path, prefix: &[u8]) -> Result<BTreeSet<String>, IndexError> {
    let mut logs: Vec<std::path::PathBuf> = match std::fs::read_dir(path) {
        Ok(d) => d.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "log")).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(source) => return Err(IndexError::Io { path: path.to_owned(), source }),
    };
    logs.sort();
    let mut out = BTreeSet::new();
    for log in logs {
        let bytes = std::fs::read(&log).map_err(|source| IndexError::Io { path: log.clone(), source })?;
        keys_in(&wal_payload(&bytes), prefix, &mut out);
    }
    Ok(out)
}

/// RocksDB's write-ahead-log block size.
const WAL_BLOCK: usize = 32 * 1024;

/// The records' payloads of a write-ahead log, their headers (checksum, length, type, and the
/// log number of a recyclable record) dropped, in order; where a header does not fit its
/// block (damaged), the rest of that block is kept as it is.
fn wal_payload(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for block in bytes.chunks(WAL_BLOCK) {
        let mut pos = 0;
        while pos + 7 <= block.len() {
            let len = usize::from(u16::from_le_bytes([block[pos + 4], block[pos + 5]]));
            let kind = block[pos + 6];
            if kind == 0 && len == 0 {
                break; // the block's zero padding
            }
            // Recyclable records (types 5 to 8 and 11, 131) carry a 4-byte log number more.
            let header = if matches!(kind, 5..=8 | 11 | 131) { 11 } else { 7 };
            if pos + header + len > block.len() {
                out.extend_from_slice(&block[pos..]);
                break;
            }
            out.extend_from_slice(&block[pos + header..pos + header + len]);
            pos += header + len;
        }
    }
    out
}

/// What a write-batch entry does with its key, from its type tag (RocksDB's `ValueType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Entry {
    /// Value, merge, blob index, wide-column entity, value with preferred seqno.
    Put,
    /// Deletion, single deletion.
    Delete,
    /// Range deletion: the key is the range's start; its end key follows it.
    DeleteRange,
}

/// The entry whose key length (a varint) starts at `varint` in `payload`, judged from the
/// bytes before it: `[tag][column family id][length][key]` for a named column family (the
/// index writes every key to one; ids below 128), else `[tag][length][key]` for the default
/// one. A named-family tag before a one-byte id wins (a default-family tag there would be the
/// id: a deletion in column family 1 reads `04 01`, where 01 alone is a default-family put).
/// `None`: not an entry's key (a key's bytes inside a value, or a range deletion's end key).
fn entry_at(payload: &[u8], varint: usize) -> Option<Entry> {
    let named = |tag: u8| match tag {
        0x5 | 0x6 | 0x10 | 0x17 | 0x19 => Some(Entry::Put),
        0x4 | 0x8 => Some(Entry::Delete),
        0xE => Some(Entry::DeleteRange),
        _ => None,
    };
    if let Some(i) = varint.checked_sub(2) {
        if payload[i + 1] & 0x80 == 0 {
            if let Some(e) = named(payload[i]) {
                return Some(e);
            }
        }
    }
    match payload[varint.checked_sub(1)?] {
        0x1 | 0x2 | 0x11 | 0x16 | 0x18 => Some(Entry::Put),
        0x0 | 0x7 | 0x14 => Some(Entry::Delete),
        0xF => Some(Entry::DeleteRange),
        _ => None,
    }
}

/// A varint32 at `at` in `b`: its value and the position after it.
fn varint_at(b: &[u8], mut at: usize) -> Option<(usize, usize)> {
    let mut v = 0usize;
    for shift in (0..35).step_by(7) {
        let byte = *b.get(at)?;
        at += 1;
        v |= usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some((v, at));
        }
    }
    None
}

/// Adds to `out` each key in `payload` that starts with `prefix` and is stored as a write
/// batch stores a key (its length as a varint right before it, the entry's type tag before
/// that), in the log's order: a put adds it, a later deletion (or range deletion) of it takes
/// it out again, so keys deleted on purpose are not taken for lost ones.
fn keys_in(payload: &[u8], prefix: &[u8], out: &mut BTreeSet<String>) {
    if prefix.is_empty() {
        return;
    }
    let mut from = 0;
    while let Some(at) = payload[from..].windows(prefix.len()).position(|w| w == prefix).map(|i| from + i) {
        from = at + 1;
        // A one- or two-byte varint length before the key.
        let one = at.checked_sub(1).map(|i| payload[i]).filter(|b| b & 0x80 == 0).map(|b| (usize::from(b), 1));
        let two = at
            .checked_sub(2)
            .map(|i| (payload[i], payload[i + 1]))
            .filter(|(a, b)| a & 0x80 != 0 && b & 0x80 == 0 && *b != 0)
            .map(|(a, b)| (usize::from(a & 0x7f) | usize::from(b) << 7, 2));
        for (len, width) in [one, two].into_iter().flatten() {
            if len < prefix.len() || at + len > payload.len() {
                continue;
            }
            let Some(entry) = entry_at(payload, at - width) else { continue };
            let Ok(k) = std::str::from_utf8(&payload[at..at + len]) else { continue };
            if k.chars().any(char::is_control) {
                continue;
            }
            match entry {
                Entry::Put => {
                    out.insert(k.to_owned());
                }
                Entry::Delete => {
                    out.remove(k);
                }
                Entry::DeleteRange => {
                    // The end key follows (exclusive); unreadable: nothing is taken out.
                    let end =
                        varint_at(payload, at + len).and_then(|(n, p)| payload.get(p..p + n)).and_then(|e| std::str::from_utf8(e).ok());
                    if let Some(end) = end {
                        let gone: Vec<String> = out.range(k.to_owned()..end.to_owned()).cloned().collect();
                        for g in gone {
                            out.remove(&g);
                        }
                    }
                }
            }
            break;
        }
    }
}

/// What [`survivors`] handed on and what it could not.
#[derive(Default)]
struct Tally {
    kept: usize,
    lost: usize,
    unreadable: bool,
}

/// Where [`survivors`] hands each key and value that read back.
type Sink<'a> = dyn FnMut(&[u8], &[u8]) -> Result<(), IndexError> + 'a;

/// Hands `sink` a column family's keys and values that read back with their checksums, in key
/// order, each once, holding none: found by reading past each damaged block (the keys after
/// it are listed without checksums and each is read again with them: a point read touches
/// only the blocks that hold it) until a checked iteration can go on.
fn survivors(db: &DB, cf_name: &str, path: &Path, sink: &mut Sink<'_>) -> Result<Tally, IndexError> {
    let storage = |source| IndexError::Storage { path: path.to_owned(), source };
    let cf = db.cf_handle(cf_name).ok_or_else(|| crate::index::corrupt(path, "column family", cf_name))?;
    let live = db.live_files().map_err(storage)?;
    let mut out = Tally::default();
    // The last key handed on: a key read again after a resume is not handed on twice.
    let mut last: Option<Vec<u8>> = None;
    let mut emit = |k: &[u8], v: &[u8], out: &mut Tally| -> Result<(), IndexError> {
        if last.as_deref().is_some_and(|l| k <= l) {
            return Ok(());
        }
        last = Some(k.to_vec());
        out.kept += 1;
        sink(k, v)
    };
    let mut from: Option<Vec<u8>> = None;
    loop {
        let mode = match &from {
            Some(k) => IteratorMode::From(k, Direction::Forward),
            None => IteratorMode::Start,
        };
        let mut failure = None;
        for kv in db.iterator_cf_opt(cf, verified(), mode) {
            match kv {
                Ok((k, v)) => {
                    from = Some(after(&k));
                    emit(&k, &v, &mut out)?;
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let Some(e) = failure else { break };
        // Past the damage: list the keys without checksums, keep those that read back with them.
        let start = from.clone();
        let mode = match &start {
            Some(k) => IteratorMode::From(k, Direction::Forward),
            None => IteratorMode::Start,
        };
        let mut resume = None;
        for kv in db.iterator_cf_opt(cf, unverified(), mode) {
            let Ok((k, _)) = kv else { break };
            if readable_from(db, cf, &k) {
                resume = Some(k.to_vec());
                break;
            }
            from = Some(after(&k));
            match db.get_cf_opt(cf, &k, &verified()) {
                Ok(Some(v)) => emit(&k, &v, &mut out)?,
                Ok(None) => {}
                Err(_) => out.lost += 1,
            }
        }
        let next = match resume {
            Some(k) => k,
            None => {
                // Unreadable even without checksums (a block that does not decompress): find
                // where a checked read can start again, by bisection between the last key read
                // and the end of the damaged file. What lies between is lost.
                out.unreadable = true;
                let end = table_named(e.as_ref())
                    .and_then(|file| live.iter().find(|f| f.name.trim_start_matches('/') == file))
                    .and_then(|f| f.end_key.clone());
                let Some(end) = end else { break };
                let lo = from.clone().unwrap_or_default();
                first_readable(db, cf, &lo, &after(&end))
            }
        };
        if start.as_ref().is_some_and(|s| *s >= next) && from.as_ref().is_some_and(|f| *f >= next) {
            break;
        }
        from = Some(next);
    }
    Ok(out)
}

/// Longest key [`first_readable`] bisects over.
const MAX_BISECT_KEY: usize = 256;

/// A checked read (seek) from `k` succeeds.
fn readable_from(db: &DB, cf: &rocksdb::ColumnFamily, k: &[u8]) -> bool {
    !matches!(db.iterator_cf_opt(cf, verified(), IteratorMode::From(k, Direction::Forward)).next(), Some(Err(_)))
}

/// The smallest key (to within the byte-string bisection) above `lo` from which a checked read
/// succeeds, given that one from `hi` does: keys compare as base-256 numbers padded to one
/// length, so a damaged block's key range is an interval of them.
fn first_readable(db: &DB, cf: &rocksdb::ColumnFamily, lo: &[u8], hi: &[u8]) -> Vec<u8> {
    let len = lo.len().max(hi.len()).min(MAX_BISECT_KEY);
    let pad = |k: &[u8]| {
        let mut v = k[..k.len().min(len)].to_vec();
        v.resize(len, 0);
        v
    };
    let (mut lo, mut hi) = (pad(lo), pad(hi));
    if lo >= hi {
        return hi;
    }
    loop {
        let mid = midpoint(&lo, &hi);
        if mid == lo {
            return hi;
        }
        if readable_from(db, cf, &mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
}

/// `(lo + hi) / 2` of two equally long base-256 numbers.
fn midpoint(lo: &[u8], hi: &[u8]) -> Vec<u8> {
    let mut sum = vec![0u16; lo.len() + 1];
    let mut carry = 0u16;
    for i in (0..lo.len()).rev() {
        let s = u16::from(lo[i]) + u16::from(hi[i]) + carry;
        sum[i + 1] = s % 256;
        carry = s / 256;
    }
    sum[0] = carry;
    let mut mid = vec![0u8; lo.len()];
    let mut rem = sum[0];
    for (i, m) in mid.iter_mut().enumerate() {
        let v = rem * 256 + sum[i + 1];
        *m = (v / 2) as u8;
        rem = v % 2;
    }
    mid
}

/// Files in `lost/` (where RocksDB's repair sets aside what it cannot use).
fn set_aside(path: &Path) -> BTreeSet<String> {
    std::fs::read_dir(path.join("lost"))
        .map(|d| d.flatten().map(|e| format!("lost/{}", e.file_name().to_string_lossy())).collect())
        .unwrap_or_default()
}

/// Salvages the database of the index at `path` before it is opened as an index:
///
/// 1. where it does not open (a missing or damaged `CURRENT` or MANIFEST, a missing or
///    truncated table, a damaged write-ahead log), RocksDB's repair rebuilds it from the files
///    there — a database that opens is never handed to it, so a salvage never ends with less
///    than an open shows;
/// 2. every table is checked ([`check_tables`]); each damaged column family is rewritten from
///    the keys that read back (its damaged files dropped);
/// 3. `meta`: a lost format version is written again, lost slot counters and space records are
///    derived from the stored vectors (a space whose record is lost is named `recovered-N`).
///    A lost patient-key secret is refused unless `new_secret`: a new one gives every patient
///    a new key, so their earlier and later videos no longer match. The refusal comes before
///    anything but RocksDB's repair changed the directory.
///
/// Then open the index and run `Index::repair`.
pub fn salvage(path: &Path, new_secret: bool) -> Result<Salvage, IndexError> {
    let mut out = Salvage::default();
    let before = set_aside(path);
    let mark = read_mark(path);
    let sequence = store::read_sequence_mark(path);
    let mut db = match store::open_for_salvage(path, false) {
        Ok(db) => db,
        Err(IndexError::Damaged { detail, .. }) => match store::open_for_salvage(path, true) {
            Ok(db) => {
                // Only the write-ahead log was damaged: what reads back of it goes into tables.
                tracing::warn!(%detail, "the write-ahead log is damaged: its readable records are kept");
                for cf in COLUMN_FAMILIES {
                    if let Some(h) = db.cf_handle(cf) {
                        db.flush_cf(h).map_err(|source| IndexError::Storage { path: path.to_owned(), source })?;
                    }
                }
                out.wal_damaged = Some(detail);
                db
            }
            Err(IndexError::Damaged { .. }) => {
                tracing::warn!(%detail, "the database does not open: RocksDB's repair rebuilds it");
                store::rocksdb_repair(path)?;
                out.rocksdb_repair = Some(detail);
                store::open_for_salvage(path, false)?
            }
            Err(e) => return Err(e),
        },
        Err(e) => return Err(e),
    };
    out.set_aside = set_aside(path).difference(&before).cloned().collect();
    if out.rocksdb_repair.is_none() {
        // (After RocksDB's repair the sequence number comes from the tables, whose compacted
        // entries carry none: no measure of what the log lost; that repair says it is lost.)
        // A loss of buffered commits only (never synced) is a warning, as at an open.
        out.rolled_back = store::cut_or_warn(store::rolled_back(&db, sequence));
        if let Some(r) = &out.rolled_back {
            tracing::warn!("{r}");
        }
    }
    let storage = |source| IndexError::Storage { path: path.to_owned(), source };
    if let Some(m) = mark.as_ref().filter(|m| m.phase == Phase::Swap) {
        // An interrupted salvage had copied every survivor into its staging column families:
        // finish moving them, then the rest as below.
        tracing::warn!("finishing an interrupted repair");
        out.resumed = true;
        out.rewritten = finish_swap(&mut db, path, &m.families)?;
        let meta = |key: &[u8]| -> Result<Option<Vec<u8>>, IndexError> {
            let cf = db.cf_handle(CF_META).ok_or_else(|| crate::index::corrupt(path, "column family", CF_META))?;
            db.get_cf_opt(cf, key, &verified()).map_err(storage)
        };
        let version = meta(store::KEY_FORMAT_VERSION)?.is_some();
        let has_secret =
            meta(store::KEY_SECRET)?.is_some_and(|s| s.len() == 32) || meta(store::KEY_SECRET_FINGERPRINT)?.is_some_and(|f| f.len() == 32);
        let has_items = any_key(&db, path, CF_ITEMS)?;
        mend_meta(&db, path, version, has_secret, has_items, &mut out)?;
        return finish(&db, path, true, out);
    }
    // A salvage interrupted while copying left the damaged column families as they were:
    // its staging copies are dropped and it starts again.
    for name in DB::list_cf(&rocksdb::Options::default(), path).map_err(storage)? {
        if name.starts_with(STAGING) {
            db.drop_cf(&name).map_err(storage)?;
        }
    }
    out.resumed = mark.is_some();
    out.damaged = check_tables(&db, path)?;
    let damaged_cfs: BTreeSet<&'static str> =
        COLUMN_FAMILIES.iter().copied().filter(|cf| out.damaged.iter().any(|d| d.column_family == *cf)).collect();
    // The secret first: nothing of ours is changed before the user has agreed to lose it.
    // `meta` is small: its survivors are held.
    let mut meta_rows: Option<BTreeMap<Vec<u8>, Vec<u8>>> = None;
    if damaged_cfs.contains(CF_META) {
        let mut rows = BTreeMap::new();
        survivors(&db, CF_META, path, &mut |k, v| {
            rows.insert(k.to_vec(), v.to_vec());
            Ok(())
        })?;
        meta_rows = Some(rows);
    }
    let meta_value = |key: &[u8]| -> Result<Option<Vec<u8>>, IndexError> {
        match &meta_rows {
            Some(rows) => Ok(rows.get(key).cloned()),
            None => {
                let cf = db.cf_handle(CF_META).ok_or_else(|| crate::index::corrupt(path, "column family", CF_META))?;
                db.get_cf_opt(cf, key, &verified()).map_err(storage)
            }
        }
    };
    // Any key of `items`, even one in a damaged block: a secret is never replaced silently.
    let has_items = any_key(&db, path, CF_ITEMS)?;
    let version = meta_value(store::KEY_FORMAT_VERSION)?;
    let secret = meta_value(store::KEY_SECRET)?;
    // A secret kept outside the index: its fingerprint stands for it.
    let fingerprint = meta_value(store::KEY_SECRET_FINGERPRINT)?;
    let has_secret = secret.as_ref().is_some_and(|s| s.len() == 32) || fingerprint.as_ref().is_some_and(|f| f.len() == 32);
    if !has_secret && has_items {
        if !new_secret {
            return Err(IndexError::SecretLost { path: path.to_owned() });
        }
        out.meta.push("the patient-key secret was lost: a new one was made (re-ingested videos get new patient keys)".into());
    }
    if !damaged_cfs.is_empty() {
        // Crash-safe in two phases, each recorded in the mark before it starts: survivors
        // streamed into staging column families (the damaged ones untouched: a kill leaves the
        // old index, which the next run salvages from the start), then each damaged column
        // family dropped and refilled from its staging copy (a kill leaves complete staging
        // copies, which the next run moves).
        let families: Vec<String> = damaged_cfs.iter().map(|c| (*c).to_owned()).collect();
        write_mark(path, &Mark { phase: Phase::Copy, families: families.clone() })?;
        let mut tallies = BTreeMap::new();
        for cf in &damaged_cfs {
            let staging = format!("{STAGING}{cf}");
            db.create_cf(&staging, &store::column_family_options()).map_err(storage)?;
            let handle = db.cf_handle(&staging).ok_or_else(|| crate::index::corrupt(path, "column family", staging.clone()))?;
            let mut wb = WriteBatch::default();
            let tally = survivors(&db, cf, path, &mut |k, v| {
                wb.put_cf(handle, k, v);
                if wb.len() >= SALVAGE_BATCH {
                    db.write(std::mem::take(&mut wb)).map_err(storage)?;
                }
                Ok(())
            })?;
            db.write(wb).map_err(storage)?;
            db.flush_cf(handle).map_err(storage)?;
            tallies.insert(*cf, tally);
        }
        db.flush_wal(true).map_err(storage)?;
        write_mark(path, &Mark { phase: Phase::Swap, families: families.clone() })?;
        out.rewritten = finish_swap(&mut db, path, &families)?;
        for r in &mut out.rewritten {
            if let Some(t) = tallies.get(r.column_family.as_str()) {
                r.lost = t.lost;
                r.unreadable_blocks = t.unreadable;
            }
        }
    }
    mend_meta(&db, path, version.is_some(), has_secret, has_items, &mut out)?;
    let rebuilt = !damaged_cfs.is_empty() || out.rocksdb_repair.is_some() || out.wal_damaged.is_some() || out.rolled_back.is_some();
    finish(&db, path, rebuilt, out)
}

/// Survivors written per batch by a salvage (memory stays bounded by one batch).
const SALVAGE_BATCH: usize = 1024;

/// Name prefix of a salvage's staging column families.
const STAGING: &str = "salvage-";

/// The phase a salvage recorded in [`store::SALVAGE_MARK`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Phase {
    /// Survivors are being copied into staging column families; the damaged ones are intact.
    Copy,
    /// The staging copies are complete; the damaged column families are being replaced.
    Swap,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Mark {
    phase: Phase,
    families: Vec<String>,
}

/// The mark an interrupted salvage left; an unreadable one counts as [`Phase::Copy`] (start
/// again: the staging copies are dropped, the damaged column families are still there unless
/// a swap had begun, whose mark was then written whole).
fn read_mark(path: &Path) -> Option<Mark> {
    let bytes = std::fs::read(path.join(store::SALVAGE_MARK)).ok()?;
    Some(serde_json::from_slice(&bytes).unwrap_or(Mark { phase: Phase::Copy, families: Vec::new() }))
}

/// Writes the mark whole or not at all: a temporary file, synced, renamed over it, the
/// directory synced.
fn write_mark(path: &Path, mark: &Mark) -> Result<(), IndexError> {
    let io = |source| IndexError::Io { path: path.join(store::SALVAGE_MARK), source };
    let tmp = path.join(format!("{}.tmp", store::SALVAGE_MARK));
    let bytes = serde_json::to_vec(mark).map_err(|e| crate::index::corrupt(path, "salvage mark", e))?;
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path.join(store::SALVAGE_MARK)).map_err(io)?;
    std::fs::File::open(path).and_then(|d| d.sync_all()).map_err(io)
}

/// Replaces each of `families` by its staging copy (where one is left: a family whose copy is
/// gone was replaced already), in bounded batches, then drops the copy.
fn finish_swap(db: &mut DB, path: &Path, families: &[String]) -> Result<Vec<Rewritten>, IndexError> {
    let storage = |source| IndexError::Storage { path: path.to_owned(), source };
    let mut out = Vec::new();
    for cf in families {
        let staging = format!("{STAGING}{cf}");
        if db.cf_handle(&staging).is_none() {
            continue;
        }
        if db.cf_handle(cf).is_some() {
            db.drop_cf(cf).map_err(storage)?;
        }
        db.create_cf(cf, &store::column_family_options()).map_err(storage)?;
        let (from, to) = (
            db.cf_handle(&staging).ok_or_else(|| crate::index::corrupt(path, "column family", staging.clone()))?,
            db.cf_handle(cf).ok_or_else(|| crate::index::corrupt(path, "column family", cf.clone()))?,
        );
        let mut kept = 0;
        let mut wb = WriteBatch::default();
        for kv in db.iterator_cf_opt(from, verified(), IteratorMode::Start) {
            let (k, v) = kv.map_err(storage)?;
            wb.put_cf(to, k, v);
            kept += 1;
            if wb.len() >= SALVAGE_BATCH {
                db.write(std::mem::take(&mut wb)).map_err(storage)?;
            }
        }
        db.write(wb).map_err(storage)?;
        db.flush_cf(to).map_err(storage)?;
        db.flush_wal(true).map_err(storage)?;
        db.drop_cf(&staging).map_err(storage)?;
        out.push(Rewritten { column_family: cf.clone(), kept, lost: 0, unreadable_blocks: false });
    }
    Ok(out)
}

/// Whether `cf` holds any key (read without checksums: a key in a damaged block counts).
fn any_key(db: &DB, path: &Path, cf: &'static str) -> Result<bool, IndexError> {
    let h = db.cf_handle(cf).ok_or_else(|| crate::index::corrupt(path, "column family", cf))?;
    Ok(db.iterator_cf_opt(h, unverified(), IteratorMode::Start).next().is_some())
}

/// The last step of every salvage: the secondary keys marked for a rebuild at the next open
/// (where anything was rebuilt), everything synced, the mark removed.
fn finish(db: &DB, path: &Path, rebuilt: bool, out: Salvage) -> Result<Salvage, IndexError> {
    let storage = |source| IndexError::Storage { path: path.to_owned(), source };
    if rebuilt {
        let cf = db.cf_handle(CF_META).ok_or_else(|| crate::index::corrupt(path, "column family", CF_META))?;
        db.delete_cf(cf, store::KEY_LOOKUP_VERSION).map_err(storage)?;
    }
    db.flush_wal(true).map_err(storage)?;
    // What the log lost is reported (and acknowledged): the index is what it holds now.
    store::write_sequence_mark(path, db.latest_sequence_number())?;
    match std::fs::remove_file(path.join(store::SALVAGE_MARK)) {
        Ok(()) => {
            std::fs::File::open(path).and_then(|d| d.sync_all()).map_err(|source| IndexError::Io { path: path.to_owned(), source })?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(IndexError::Io { path: path.join(store::SALVAGE_MARK), source }),
    }
    Ok(out)
}

/// Puts back what `meta` lost and can be derived: the format version, each collection's slot
/// counter (one above the highest stored vector or tombstone), a record for each space that
/// has vectors (named `recovered-N`, its dimension the vectors'), a new secret where it was lost.
fn mend_meta(db: &DB, path: &Path, has_version: bool, has_secret: bool, has_items: bool, out: &mut Salvage) -> Result<(), IndexError> {
    let storage = |source| IndexError::Storage { path: path.to_owned(), source };
    let cf = |n: &'static str| db.cf_handle(n).ok_or_else(|| crate::index::corrupt(path, "column family", n));
    let (cf_meta, cf_vec, cf_graph) = (cf(CF_META)?, cf(CF_VECTORS)?, cf(CF_GRAPH)?);
    if !has_items && has_version {
        return Ok(());
    }
    let mut wb = WriteBatch::default();
    if !has_version && has_items {
        wb.put_cf(cf_meta, store::KEY_FORMAT_VERSION, store::FORMAT_VERSION.to_be_bytes());
        out.meta.push(format!("the format version was lost: written again ({})", store::FORMAT_VERSION));
    }
    if !has_secret && has_items {
        let mut secret = [0u8; 32];
        rand::fill(&mut secret);
        wb.put_cf(cf_meta, store::KEY_SECRET, secret);
    }
    // Highest slot per collection, and a dimension per space, from the vectors and tombstones.
    let mut top: BTreeMap<Collection, u32> = BTreeMap::new();
    let mut dims: BTreeMap<SpaceId, usize> = BTreeMap::new();
    for kv in db.iterator_cf_opt(cf_vec, verified(), IteratorMode::Start) {
        let (k, v) = kv.map_err(storage)?;
        let Some((c, slot)) = codec::decode_vector_key(&k) else { continue };
        let e = top.entry(c).or_insert(0);
        *e = (*e).max(slot.0 + 1);
        if let Some((_, vec)) = codec::decode_vector(&v) {
            dims.entry(c.space).or_insert(vec.len());
        }
    }
    for kv in db.iterator_cf_opt(cf_graph, verified(), IteratorMode::From(b"dead/", Direction::Forward)) {
        let (k, _) = kv.map_err(storage)?;
        if !k.starts_with(b"dead/") {
            break;
        }
        let (Some(c), Some(slot)) = (Collection::from_prefix(&k[5..]), codec::decode_dead_key(&k)) else { continue };
        let e = top.entry(c).or_insert(0);
        *e = (*e).max(slot.0 + 1);
    }
    for (c, n) in &top {
        let key = codec::next_slot_key(*c);
        let now = db.get_cf(cf_meta, &key).map_err(storage)?.and_then(|v| <[u8; 4]>::try_from(v.as_slice()).ok()).map(u32::from_be_bytes);
        if now.is_none_or(|m| m < *n) {
            wb.put_cf(cf_meta, key, n.to_be_bytes());
            out.meta.push(format!("the slot counter of space {} {} was lost: set to {n}", c.space.0, c.kind));
        }
    }
    // Spaces with vectors whose record is lost, and the names the records that survive hold.
    let mut lost: Vec<(SpaceId, usize)> = Vec::new();
    let mut held: BTreeSet<String> = BTreeSet::new();
    for (space, dim) in dims {
        let mut key = store::KEY_SPACE_PREFIX.to_vec();
        key.extend_from_slice(&space.0.to_be_bytes());
        match db.get_cf(cf_meta, &key).map_err(storage)? {
            Some(v) => {
                if let Ok((info, _)) = bincode::serde::decode_from_slice::<SpaceInfo, _>(&v, bincode::config::standard()) {
                    held.insert(info.name);
                }
            }
            None => lost.push((space, dim)),
        }
    }
    let probes = if lost.is_empty() { Vec::new() } else { probed_spaces(db, path)? };
    let names = name_lost_spaces(&lost, &probes, &held);
    for (space, dim) in lost {
        let mut key = store::KEY_SPACE_PREFIX.to_vec();
        key.extend_from_slice(&space.0.to_be_bytes());
        let (name, line) = match names.get(&space) {
            Some(name) => (
                name.clone(),
                format!(
                    "the record of embedding space {} was lost: written again as space `{name}` (dim {dim}), the name its \
                     model's probe in the ingest log holds; the next ingest with that model fills it again",
                    space.0
                ),
            ),
            None => (
                format!("recovered-{}", space.0),
                format!(
                    "the record of embedding space {} was lost and no model probe in the ingest log names it alone: its \
                     vectors are kept as space `recovered-{}` (dim {dim}); the next ingest fills a new space for its model",
                    space.0, space.0
                ),
            ),
        };
        let info = SpaceInfo { id: space, name, dim };
        let val = bincode::serde::encode_to_vec(&info, bincode::config::standard())
            .map_err(|e| crate::index::corrupt(path, "space record", e))?;
        wb.put_cf(cf_meta, key, val);
        out.meta.push(line);
    }
    db.write_opt(wb, &crate::index::synced()).map_err(storage)
}

/// The spaces the ingest log holds a model probe for ([`store::LOG_SPACE_PROBE`] + name → JSON
/// whose `text` embedding has the space's dimension): name and dimension (0 where the probe
/// does not say), in name order.
fn probed_spaces(db: &DB, path: &Path) -> Result<Vec<(String, usize)>, IndexError> {
    let storage = |source| IndexError::Storage { path: path.to_owned(), source };
    let Some(cf) = db.cf_handle(store::CF_INGEST_LOG) else { return Ok(Vec::new()) };
    let prefix = store::LOG_SPACE_PROBE.as_bytes();
    let mut out = Vec::new();
    for kv in db.iterator_cf_opt(cf, verified(), IteratorMode::From(prefix, Direction::Forward)) {
        let (k, v) = match kv {
            Ok(kv) => kv,
            // A damaged ingest log: the probes read so far are all there is to go by.
            Err(e) if e.kind() == rocksdb::ErrorKind::Corruption => break,
            Err(e) => return Err(storage(e)),
        };
        let Some(name) = k.strip_prefix(prefix) else { break };
        let dim = serde_json::from_slice::<serde_json::Value>(&v).ok().and_then(|j| j["text"].as_array().map(Vec::len)).unwrap_or(0);
        out.push((String::from_utf8_lossy(name).into_owned(), dim));
    }
    Ok(out)
}

/// Names for spaces whose record is lost (`lost`: id and the dimension of its vectors) from the
/// model probes (`probes`: name and dimension) that no surviving record (`held`) names: a lost
/// space gets a probe's name where it is the only lost space of its dimension and that probe
/// the only unclaimed one of it. Two models of one dimension cannot be told apart by their
/// vectors: those spaces keep no name here.
fn name_lost_spaces(lost: &[(SpaceId, usize)], probes: &[(String, usize)], held: &BTreeSet<String>) -> BTreeMap<SpaceId, String> {
    let mut out = BTreeMap::new();
    for (space, dim) in lost {
        let same_dim = lost.iter().filter(|(_, d)| d == dim).count();
        let candidates: Vec<&String> = probes.iter().filter(|(n, d)| d == dim && !held.contains(n)).map(|(n, _)| n).collect();
        if same_dim == 1 && candidates.len() == 1 {
            out.insert(*space, candidates[0].clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_space_is_named_from_the_one_probe_of_its_dimension() {
        let probes = vec![("a".to_owned(), 512), ("b".to_owned(), 64), ("c".to_owned(), 64), ("d".to_owned(), 32)];
        let held: BTreeSet<String> = ["d".to_owned()].into();
        let lost = [(SpaceId(1), 512), (SpaceId(2), 64), (SpaceId(3), 32)];
        let names = name_lost_spaces(&lost, &probes, &held);
        // 512: one probe; 64: two probes, no telling which; 32: its probe's space survived.
        assert_eq!(names, BTreeMap::from([(SpaceId(1), "a".to_owned())]));
        let lost = [(SpaceId(2), 64), (SpaceId(4), 64)];
        assert!(name_lost_spaces(&lost, &probes, &BTreeSet::new()).is_empty());
    }

    #[test]
    fn keys_are_read_from_a_write_ahead_log_with_or_without_their_checksums() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = rocksdb::Options::default();
        o.create_if_missing(true);
        o.create_missing_column_families(true);
        let db = DB::open_cf(&o, dir.path(), ["log"]).unwrap();
        let cf = db.cf_handle("log").unwrap();
        // Long values: the records cross the log's 32 KiB blocks.
        for i in 0..40 {
            let mut wb = WriteBatch::default();
            wb.put_cf(cf, format!("file:/export/clip{i:03}.avi"), vec![b'x'; 3000 + i]);
            wb.put_cf(cf, format!("other:{i}"), b"y");
            db.write(wb).unwrap();
        }
        drop(db);
        let want: BTreeSet<String> = (0..40).map(|i| format!("file:/export/clip{i:03}.avi")).collect();
        assert_eq!(wal_keys(dir.path(), b"file:").unwrap(), want);
        // Bytes flipped in the values of a record: its key is still read.
        let log = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.path()).find(|p| p.extension().is_some_and(|x| x == "log"));
        let log = log.unwrap();
        let mut b = std::fs::read(&log).unwrap();
        let at = b.windows(18).position(|w| w == b"file:/export/clip0".as_slice()).unwrap() + 200;
        for x in &mut b[at..at + 8] {
            *x ^= 0x5a;
        }
        std::fs::write(&log, b).unwrap();
        assert_eq!(wal_keys(dir.path(), b"file:").unwrap(), want);
    }

    /// Keys a later batch deleted (a deletion, a single deletion, a range deletion) are not
    /// listed; a key put again after its deletion is; a key's bytes inside a value are not a
    /// key. Column family ids 1 and 2 make a deletion's `04 01` / `04 02` look like a
    /// default-family put (01) or merge (02) to a reader that does not look at both bytes.
    #[test]
    fn keys_deleted_on_purpose_are_not_read_from_a_write_ahead_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = rocksdb::Options::default();
        o.create_if_missing(true);
        o.create_missing_column_families(true);
        let db = DB::open_cf(&o, dir.path(), ["log", "other"]).unwrap();
        for name in ["log", "other"] {
            let cf = db.cf_handle(name).unwrap();
            for i in 0..12 {
                let mut wb = WriteBatch::default();
                wb.put_cf(cf, format!("file:/{name}/clip{i:02}.avi"), b"x");
                db.write(wb).unwrap();
            }
            let mut wb = WriteBatch::default();
            wb.delete_cf(cf, format!("file:/{name}/clip01.avi"));
            wb.delete_range_cf(cf, format!("file:/{name}/clip04.avi"), format!("file:/{name}/clip07.avi"));
            db.write(wb).unwrap();
            let mut wb = WriteBatch::default();
            wb.single_delete_cf(cf, format!("file:/{name}/clip09.avi"));
            db.write(wb).unwrap();
            db.delete_cf(cf, format!("file:/{name}/clip10.avi")).unwrap();
            db.put_cf(cf, format!("file:/{name}/clip10.avi"), b"again").unwrap();
            db.put_cf(cf, format!("note:{name}"), format!("a value naming file:/{name}/clip99.avi")).unwrap();
        }
        drop(db);
        let want: BTreeSet<String> =
            ["log", "other"].iter().flat_map(|name| [0, 2, 3, 7, 8, 10, 11].map(|i| format!("file:/{name}/clip{i:02}.avi"))).collect();
        assert_eq!(wal_keys(dir.path(), b"file:").unwrap(), want);
    }

    #[test]
    fn midpoints_of_byte_strings() {
        assert_eq!(midpoint(&[0, 0], &[0, 10]), vec![0, 5]);
        assert_eq!(midpoint(&[0, 255], &[1, 1]), vec![1, 0]);
        assert_eq!(midpoint(&[255, 255], &[255, 255]), vec![255, 255]);
        assert_eq!(midpoint(&[1, 0], &[2, 0]), vec![1, 128]);
    }

    #[test]
    fn table_names_are_found_in_rocksdb_messages() {
        let m = "Corruption: block checksum mismatch: stored = 1, computed = 2, type = 1  in /tmp/x/000012.sst offset 0 size 9";
        assert_eq!(table_named(m).as_deref(), Some("000012.sst"));
        assert_eq!(
            table_named("IO error: No such file or directory: While open a file for random read: /a/b/000007.sst"),
            Some("000007.sst".into())
        );
        assert_eq!(table_named("Corruption: bad WAL record"), None);
        assert_eq!(table_named("x.sst"), None);
    }
}
