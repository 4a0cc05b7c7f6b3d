//! Typed big-endian key codecs and raw vector values. Big-endian so that byte order is numeric
//! order and a collection's slots are one contiguous, ordered key range.
//!
//! Changing any layout here breaks existing indexes: bump `store::FORMAT_VERSION`.

use crate::date::StudyDate;
use crate::ids::{Kind, Slot, SpaceId};
use half::f16;

/// A collection: the vectors of one kind in one embedding space (one HNSW graph each).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Collection {
    /// Embedding space.
    pub space: SpaceId,
    /// Item kind.
    pub kind: Kind,
}

impl Collection {
    /// 3-byte prefix: space (u16 BE) then kind code.
    pub fn prefix(self) -> [u8; 3] {
        let s = self.space.0.to_be_bytes();
        [s[0], s[1], self.kind.code()]
    }

    /// Decodes [`Collection::prefix`].
    pub fn from_prefix(b: &[u8]) -> Option<Collection> {
        if b.len() < 3 {
            return None;
        }
        let space = SpaceId(u16::from_be_bytes([b[0], b[1]]));
        Some(Collection { space, kind: Kind::from_code(b[2])? })
    }
}

/// `vectors` key: collection prefix + slot (u32 BE).
pub fn vector_key(c: Collection, slot: Slot) -> [u8; 7] {
    let p = c.prefix();
    let s = slot.0.to_be_bytes();
    [p[0], p[1], p[2], s[0], s[1], s[2], s[3]]
}

/// Decodes [`vector_key`].
pub fn decode_vector_key(k: &[u8]) -> Option<(Collection, Slot)> {
    if k.len() != 7 {
        return None;
    }
    let c = Collection::from_prefix(&k[..3])?;
    Some((c, Slot(u32::from_be_bytes([k[3], k[4], k[5], k[6]]))))
}

/// `slots` key: collection prefix + external item id bytes.
pub fn slot_key(c: Collection, item: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(3 + item.len());
    k.extend_from_slice(&c.prefix());
    k.extend_from_slice(item.as_bytes());
    k
}

/// `meta` key of a collection's next free slot.
pub fn next_slot_key(c: Collection) -> Vec<u8> {
    let mut k = b"next_slot/".to_vec();
    k.extend_from_slice(&c.prefix());
    k
}

/// `graph` key prefix of a collection's tombstones.
pub fn dead_prefix(c: Collection) -> Vec<u8> {
    let mut k = b"dead/".to_vec();
    k.extend_from_slice(&c.prefix());
    k
}

/// `graph` key marking a slot dead (its vector replaced or deleted, kept until a rebuild).
pub fn dead_key(c: Collection, slot: Slot) -> Vec<u8> {
    let mut k = dead_prefix(c);
    k.extend_from_slice(&slot.0.to_be_bytes());
    k
}

/// Decodes the slot of a [`dead_key`].
pub fn decode_dead_key(k: &[u8]) -> Option<Slot> {
    let rest = k.strip_prefix(b"dead/")?;
    if rest.len() != 7 {
        return None;
    }
    Collection::from_prefix(rest)?;
    Some(Slot(u32::from_be_bytes([rest[3], rest[4], rest[5], rest[6]])))
}

/// `graph` key of a collection's snapshot header.
pub fn snapshot_header_key(c: Collection) -> Vec<u8> {
    let mut k = b"snap/".to_vec();
    k.extend_from_slice(&c.prefix());
    k.push(b'h');
    k
}

/// `graph` key of chunk `i` of a collection's snapshot.
pub fn snapshot_chunk_key(c: Collection, i: u32) -> Vec<u8> {
    let mut k = b"snap/".to_vec();
    k.extend_from_slice(&c.prefix());
    k.push(b'c');
    k.extend_from_slice(&i.to_be_bytes());
    k
}

/// `lookup` key tag of the patient keys.
const LOOKUP_PATIENT: u8 = b'p';
/// `lookup` key tag of the study keys.
const LOOKUP_STUDY: u8 = b's';
/// `lookup` key tag of the date keys.
const LOOKUP_DATE: u8 = b'd';
/// Date bytes of an undated item in a patient key: after every day, so undated items come last.
const UNDATED: [u8; 4] = [0xff; 4];

/// The secondary keys of one item in `lookup` (each with the item's kind code as its value):
/// - `p`, patient length (u32 BE), patient, date (4 bytes BE, `FF FF FF FF` when undated),
///   item id — a patient's items in date order, then id order, undated last;
/// - `s`, study length (u32 BE), study, item id;
/// - `d`, date (4 bytes BE), item id — dated items only.
///
/// The length before a patient or study keeps one patient's keys apart from those of another
/// whose key it prefixes.
pub fn lookup_keys(patient: Option<&str>, study: Option<&str>, date: Option<StudyDate>, item: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(3);
    if let Some(p) = patient {
        let mut k = patient_prefix(p);
        k.extend_from_slice(&date.map_or(UNDATED, StudyDate::key));
        k.extend_from_slice(item.as_bytes());
        out.push(k);
    }
    if let Some(s) = study {
        let mut k = study_prefix(s);
        k.extend_from_slice(item.as_bytes());
        out.push(k);
    }
    if let Some(d) = date {
        let mut k = date_prefix(d);
        k.extend_from_slice(item.as_bytes());
        out.push(k);
    }
    out
}

fn named_prefix(tag: u8, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + name.len() + 4 + 32);
    k.push(tag);
    k.extend_from_slice(&(name.len() as u32).to_be_bytes());
    k.extend_from_slice(name.as_bytes());
    k
}

/// Prefix of one patient's `lookup` keys.
pub fn patient_prefix(patient: &str) -> Vec<u8> {
    named_prefix(LOOKUP_PATIENT, patient)
}

/// Prefix of one study's `lookup` keys.
pub fn study_prefix(study: &str) -> Vec<u8> {
    named_prefix(LOOKUP_STUDY, study)
}

/// Prefix of one day's `lookup` keys (the date keys of later days sort after it).
pub fn date_prefix(date: StudyDate) -> Vec<u8> {
    let d = date.key();
    vec![LOOKUP_DATE, d[0], d[1], d[2], d[3]]
}

/// First byte of every patient key: patient keys span `[PATIENTS, PATIENTS + 1)`.
pub const PATIENTS: u8 = LOOKUP_PATIENT;
/// First byte of every date key.
pub const DATES: u8 = LOOKUP_DATE;

/// The item id of a patient key (after [`patient_prefix`] of length `prefix_len`), or `None`
/// when the key is malformed.
pub fn patient_key_item(k: &[u8], prefix_len: usize) -> Option<&str> {
    std::str::from_utf8(k.get(prefix_len + 4..)?).ok()
}

/// The item id of a study key (after [`study_prefix`] of length `prefix_len`).
pub fn study_key_item(k: &[u8], prefix_len: usize) -> Option<&str> {
    std::str::from_utf8(k.get(prefix_len..)?).ok()
}

/// The day and item id of a date key.
pub fn decode_date_key(k: &[u8]) -> Option<(StudyDate, &str)> {
    if k.first() != Some(&LOOKUP_DATE) || k.len() < 5 {
        return None;
    }
    let d = StudyDate::from_key([k[1], k[2], k[3], k[4]])?;
    Some((d, std::str::from_utf8(&k[5..]).ok()?))
}

/// The patient a patient key belongs to.
pub fn decode_patient_key(k: &[u8]) -> Option<&str> {
    decode_named(LOOKUP_PATIENT, k)
}

/// The study a study key belongs to.
pub fn decode_study_key(k: &[u8]) -> Option<&str> {
    decode_named(LOOKUP_STUDY, k)
}

fn decode_named(tag: u8, k: &[u8]) -> Option<&str> {
    if k.first() != Some(&tag) || k.len() < 5 {
        return None;
    }
    let n = u32::from_be_bytes([k[1], k[2], k[3], k[4]]) as usize;
    std::str::from_utf8(k.get(5..5usize.checked_add(n)?)?).ok()
}

/// How vector components are stored. The code is persisted in every vector value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Encoding {
    /// 4 bytes per component, little-endian.
    #[default]
    F32,
    /// 2 bytes per component (IEEE half), little-endian.
    F16,
}

impl Encoding {
    /// Bytes per component.
    pub(crate) fn width(self) -> usize {
        match self {
            Encoding::F32 => 4,
            Encoding::F16 => 2,
        }
    }

    pub(crate) fn code(self) -> u8 {
        match self {
            Encoding::F32 => 0,
            Encoding::F16 => 1,
        }
    }
}

/// `vectors` value: encoding code (u8), item id length (u16 LE), item id, components.
/// The item id sits beside the vector so that slot → item needs no second lookup.
pub fn encode_vector(item: &str, v: &[f32], enc: Encoding) -> Vec<u8> {
    let id = item.as_bytes();
    let mut out = Vec::with_capacity(3 + id.len() + v.len() * enc.width());
    out.push(enc.code());
    out.extend_from_slice(&(id.len() as u16).to_le_bytes());
    out.extend_from_slice(id);
    match enc {
        Encoding::F32 => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Encoding::F16 => v.iter().for_each(|x| out.extend_from_slice(&f16::from_f32(*x).to_le_bytes())),
    }
    out
}

/// Decodes [`encode_vector`]; `None` when the bytes are malformed.
pub fn decode_vector(b: &[u8]) -> Option<(String, Vec<f32>)> {
    let mut v = Vec::new();
    let (id, _) = decode_vector_into(b, &mut v)?;
    Some((id.to_owned(), v))
}

/// [`decode_vector`] without its allocations: appends the components to `out` and returns the
/// item id (borrowed from `b`) and how many components were appended; `None` (and `out`
/// unchanged) when `b` is malformed.
pub fn decode_vector_into<'b>(b: &'b [u8], out: &mut Vec<f32>) -> Option<(&'b str, usize)> {
    let (id, enc, data) = split_vector(b)?;
    Some((id, decode_components(enc, data, out)))
}

/// Appends the components `data` holds in encoding `enc` (a whole number of them, as
/// [`split_vector`] gives) to `out`; returns how many.
pub fn decode_components(enc: Encoding, data: &[u8], out: &mut Vec<f32>) -> usize {
    let start = out.len();
    match enc {
        Encoding::F32 => {
            out.resize(start + data.len() / 4, 0.0);
            for (x, c) in out[start..].iter_mut().zip(data.chunks_exact(4)) {
                *x = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        Encoding::F16 => out.extend(data.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())),
    }
    out.len() - start
}

/// The parts of an [`encode_vector`] value: item id, encoding and the components' bytes (a
/// whole number of components); `None` when the bytes are malformed.
pub fn split_vector(b: &[u8]) -> Option<(&str, Encoding, &[u8])> {
    let (&code, rest) = b.split_first()?;
    if rest.len() < 2 {
        return None;
    }
    let n = u16::from_le_bytes([rest[0], rest[1]]) as usize;
    let rest = &rest[2..];
    if rest.len() < n {
        return None;
    }
    let id = std::str::from_utf8(&rest[..n]).ok()?;
    let data = &rest[n..];
    match code {
        0 if data.len() % 4 == 0 => Some((id, Encoding::F32, data)),
        1 if data.len() % 2 == 0 => Some((id, Encoding::F16, data)),
        _ => None,
    }
}

/// The first key after every key that starts with `prefix` (`None` when there is none: the
/// prefix is all `FF`), for an iterator's upper bound.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// `frames` key: space id (u16 BE), then the item id.
pub fn frames_key(space: SpaceId, item: &str) -> Vec<u8> {
    let mut k = space.0.to_be_bytes().to_vec();
    k.extend_from_slice(item.as_bytes());
    k
}

/// `frames` value: frame count (u32 LE), dimension (u32 LE), then the frames' components as
/// IEEE half, little-endian, row after row. `None` when the rows differ in length.
pub fn encode_frames(frames: &[Vec<f32>]) -> Option<Vec<u8>> {
    let dim = frames.first().map_or(0, Vec::len);
    if frames.iter().any(|f| f.len() != dim) {
        return None;
    }
    let mut out = Vec::with_capacity(8 + frames.len() * dim * 2);
    out.extend_from_slice(&(frames.len() as u32).to_le_bytes());
    out.extend_from_slice(&(dim as u32).to_le_bytes());
    for f in frames {
        f.iter().for_each(|x| out.extend_from_slice(&f16::from_f32(*x).to_le_bytes()));
    }
    Some(out)
}

/// The most rows a frames value of dimension 0 decodes to (as many frames as a DICOM cine may
/// hold); more is a damaged header.
const MAX_EMPTY_ROWS: usize = 600_000;

/// Decodes [`encode_frames`]; `None` when the bytes are malformed.
pub fn decode_frames(b: &[u8]) -> Option<Vec<Vec<f32>>> {
    if b.len() < 8 {
        return None;
    }
    let n = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
    let dim = u32::from_le_bytes([b[4], b[5], b[6], b[7]]) as usize;
    let data = &b[8..];
    if n.checked_mul(dim)?.checked_mul(2)? != data.len() {
        return None;
    }
    if dim == 0 {
        // No bytes bound the count here: a damaged header must not allocate billions of rows.
        return (n <= MAX_EMPTY_ROWS).then(|| vec![Vec::new(); n]);
    }
    Some(data.chunks_exact(dim * 2).map(|row| row.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kind() -> impl Strategy<Value = Kind> {
        prop_oneof![Just(Kind::Video), Just(Kind::Report), Just(Kind::Study)]
    }

    /// What storage or a bad copy does to a value.
    #[derive(Clone, Debug)]
    enum Damage {
        /// Cut to `at % len` bytes (strictly shorter).
        Truncate(usize),
        /// One byte XORed with a non-zero mask.
        Flip(usize, u8),
        /// Bytes appended.
        Extend(Vec<u8>),
        /// A 4-byte word overwritten (a count, a length, a dimension).
        Word(usize, u32),
    }

    fn damage() -> impl Strategy<Value = Damage> {
        prop_oneof![
            any::<usize>().prop_map(Damage::Truncate),
            (any::<usize>(), 1u8..).prop_map(|(i, x)| Damage::Flip(i, x)),
            proptest::collection::vec(any::<u8>(), 1..16).prop_map(Damage::Extend),
            (any::<usize>(), any::<u32>()).prop_map(|(i, w)| Damage::Word(i, w)),
        ]
    }

    fn damaged(b: &[u8], d: &Damage) -> Vec<u8> {
        let mut b = b.to_vec();
        match d {
            Damage::Truncate(at) => b.truncate(at % b.len().max(1)),
            Damage::Flip(i, x) if !b.is_empty() => {
                let k = i % b.len();
                b[k] ^= x;
            }
            Damage::Extend(more) => b.extend_from_slice(more),
            Damage::Word(i, w) if b.len() >= 4 => {
                let k = i % (b.len() - 3);
                b[k..k + 4].copy_from_slice(&w.to_le_bytes());
            }
            _ => {}
        }
        b
    }

    /// Every decoder on `b`: each answers `None` or a value, none panics.
    fn decode_all(b: &[u8]) {
        let _ = decode_date_key(b);
        let _ = decode_patient_key(b);
        let _ = decode_study_key(b);
        let _ = decode_frames(b);
        let _ = decode_vector(b);
        let _ = decode_vector_key(b);
        let _ = decode_dead_key(b);
    }

    #[test]
    fn prefix_end_skips_every_key_under_the_prefix() {
        assert_eq!(prefix_end(b"p\x00\x01"), Some(b"p\x00\x02".to_vec()));
        assert_eq!(prefix_end(b"p\x00\xff\xff"), Some(b"p\x01".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        let p = b"p\x00\x00\x00\x02ab";
        let next = prefix_end(p).unwrap();
        assert!(b"p\x00\x00\x00\x02ab\xff\xff\xff\xffzzz".as_slice() < next.as_slice());
        assert!(b"p\x00\x00\x00\x02ac".as_slice() >= next.as_slice());
    }

    proptest! {
        #[test]
        fn vector_key_round_trips_and_orders(space: u16, k in kind(), a: u32, b: u32) {
            let c = Collection { space: SpaceId(space), kind: k };
            let ka = vector_key(c, Slot(a));
            prop_assert_eq!(decode_vector_key(&ka), Some((c, Slot(a))));
            let kb = vector_key(c, Slot(b));
            prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
        }

        #[test]
        fn decode_vector_into_reads_what_encode_vector_wrote(id in "[a-zA-Z0-9.:-]{0,80}", v in proptest::collection::vec(-1e3f32..1e3, 0..64), half_precision in any::<bool>(), cut in 0usize..8) {
            let enc = if half_precision { Encoding::F16 } else { Encoding::F32 };
            let mut b = encode_vector(&id, &v, enc);
            b.truncate(b.len().saturating_sub(cut));
            // By the layout (code, id length, id, components): a cut inside the components
            // that leaves whole ones decodes to those; any other cut is malformed.
            let width = if half_precision { 2 } else { 4 };
            let data = v.len() * width;
            let want: Option<Vec<f32>> = (cut <= data && (data - cut) % width == 0).then(|| {
                let keep = (data - cut) / width;
                v[..keep].iter().map(|x| if half_precision { f16::from_f32(*x).to_f32() } else { *x }).collect()
            });
            let mut out = vec![7.0f32];
            match (decode_vector_into(&b, &mut out), want) {
                (Some((id2, n)), Some(want)) => {
                    prop_assert_eq!(id2, id.as_str());
                    prop_assert_eq!(n, want.len());
                    prop_assert_eq!(&out[1..], want.as_slice());
                    prop_assert_eq!(decode_vector(&b), Some((id.clone(), want)));
                }
                (None, None) => {
                    prop_assert_eq!(out, vec![7.0f32]);
                    prop_assert_eq!(decode_vector(&b), None);
                }
                (got, want) => prop_assert!(false, "decoded {:?}, the layout says {:?}", got, want),
            }
        }

        #[test]
        fn prefix_end_bounds_exactly_the_prefixed_keys(p in proptest::collection::vec(any::<u8>(), 1..4), k in proptest::collection::vec(any::<u8>(), 0..6)) {
            let inside = k.starts_with(&p);
            match prefix_end(&p) {
                Some(end) => prop_assert_eq!(inside, k.as_slice() >= p.as_slice() && k.as_slice() < end.as_slice()),
                None => prop_assert_eq!(inside, k.as_slice() >= p.as_slice()),
            }
        }

        #[test]
        fn vector_value_round_trips(id in "[a-zA-Z0-9.:-]{0,80}", v in proptest::collection::vec(-1e6f32..1e6, 0..64)) {
            let (id2, v2) = decode_vector(&encode_vector(&id, &v, Encoding::F32)).unwrap();
            prop_assert_eq!(&id2, &id);
            prop_assert_eq!(&v2, &v);
            let (id3, v3) = decode_vector(&encode_vector(&id, &v, Encoding::F16)).unwrap();
            prop_assert_eq!(&id3, &id);
            for (x, y) in v.iter().zip(&v3) {
                prop_assert!((x - y).abs() <= x.abs() * 1e-3 + 1e-4 || x.abs() > 65504.0);
            }
        }

        #[test]
        fn dead_key_round_trips(space: u16, k in kind(), a: u32) {
            let c = Collection { space: SpaceId(space), kind: k };
            let key = dead_key(c, Slot(a));
            prop_assert!(key.starts_with(&dead_prefix(c)));
            prop_assert_eq!(decode_dead_key(&key), Some(Slot(a)));
            prop_assert!(snapshot_chunk_key(c, a) < snapshot_chunk_key(c, u32::MAX) || a == u32::MAX);
        }

        #[test]
        fn frames_round_trip(n in 0usize..6, dim in 0usize..40, seed: u64) {
            let frames: Vec<Vec<f32>> =
                (0..n).map(|i| (0..dim).map(|j| (seed as f32 + (i * 131 + j) as f32).sin()).collect()).collect();
            let back = decode_frames(&encode_frames(&frames).unwrap()).unwrap();
            prop_assert_eq!(back.len(), n);
            for (a, b) in frames.iter().zip(&back) {
                prop_assert_eq!(a.len(), b.len());
                for (x, y) in a.iter().zip(b) {
                    prop_assert!((x - y).abs() <= 1e-3);
                }
            }
            let k = frames_key(SpaceId(seed as u16), "video:abc");
            prop_assert_eq!(&k[..2], &(seed as u16).to_be_bytes()[..]);
        }

        #[test]
        fn lookup_keys_group_and_order(
            pa in "[a-z]{0,6}", pb in "[a-z]{0,6}", s in "[a-z0-9.]{1,8}", ia in "[a-z0-9]{1,8}", ib in "[a-z0-9]{1,8}",
            da in proptest::option::of(0i64..40_000), db in proptest::option::of(0i64..40_000),
        ) {
            let day = |d: Option<i64>| d.and_then(StudyDate::from_days_since_epoch);
            let ka = lookup_keys(Some(&pa), Some(&s), day(da), &ia);
            let kb = lookup_keys(Some(&pb), None, day(db), &ib);
            prop_assert_eq!(ka.len(), 2 + usize::from(da.is_some()));
            // A patient's keys start with its prefix and no other patient's (even one it prefixes).
            prop_assert!(ka[0].starts_with(&patient_prefix(&pa)));
            prop_assert_eq!(kb[0].starts_with(&patient_prefix(&pa)), pa == pb);
            prop_assert_eq!(decode_patient_key(&ka[0]), Some(pa.as_str()));
            prop_assert_eq!(patient_key_item(&ka[0], patient_prefix(&pa).len()), Some(ia.as_str()));
            prop_assert_eq!(study_key_item(&ka[1], study_prefix(&s).len()), Some(ia.as_str()));
            prop_assert_eq!(decode_study_key(&ka[1]), Some(s.as_str()));
            if pa == pb {
                // Same patient: date order (undated last), then id order.
                let ord = |d: Option<i64>, i: &str| (d.is_none(), d, i.to_owned());
                prop_assert_eq!(ka[0].cmp(&kb[0]), ord(da, &ia).cmp(&ord(db, &ib)));
            }
            if let (Some(a), Some(b)) = (da, db) {
                let (ka, kb) = (ka.last().unwrap(), kb.last().unwrap());
                prop_assert_eq!(decode_date_key(ka), Some((day(da).unwrap(), ia.as_str())));
                if a != b {
                    prop_assert_eq!(ka.cmp(kb), a.cmp(&b));
                }
            }
        }

        /// Values of the sizes the index stores (CLIP dimensions, cine lengths, real ids), then
        /// damaged: undamaged values decode to what was encoded; damaged ones decode to `None` or
        /// a value without a panic or an allocation the bytes do not bound; a frames value cut
        /// short never decodes.
        #[test]
        fn decoders_take_real_values_and_survive_damage(
            id in "[a-f0-9]{32}|report:[0-9.]{1,64}|study:[0-9.]{1,64}",
            dim in prop_oneof![Just(0usize), Just(1), Just(64), Just(512), Just(768)],
            n in 0usize..48,
            f16 in any::<bool>(),
            seed: u64,
            space: u16, k in kind(), slot: u32, days in 0i64..40_000,
            d in damage(),
        ) {
            let x = |i: usize| ((seed ^ i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            let v: Vec<f32> = (0..dim).map(x).collect();
            let frames: Vec<Vec<f32>> = (0..n).map(|r| (0..dim).map(|c| x(r * dim + c)).collect()).collect();
            let enc = if f16 { Encoding::F16 } else { Encoding::F32 };
            let vb = encode_vector(&id, &v, enc);
            let (got_id, got) = decode_vector(&vb).expect("a vector value decodes");
            prop_assert_eq!(&got_id, &id);
            prop_assert_eq!(got.len(), dim);
            let tol = if f16 { 1e-3 } else { 0.0 };
            prop_assert!(got.iter().zip(&v).all(|(a, b)| (a - b).abs() <= tol));
            let fb = encode_frames(&frames).expect("rows of one length encode");
            let back = decode_frames(&fb).expect("a frames value decodes");
            prop_assert_eq!(back.len(), n);
            prop_assert!(back.iter().all(|r| r.len() == dim));
            let c = Collection { space: SpaceId(space), kind: k };
            let vk = vector_key(c, Slot(slot));
            prop_assert_eq!(decode_vector_key(&vk), Some((c, Slot(slot))));
            let dk = dead_key(c, Slot(slot));
            prop_assert_eq!(decode_dead_key(&dk), Some(Slot(slot)));
            let keys = lookup_keys(Some(&id), Some(&id), StudyDate::from_days_since_epoch(days), &id);
            prop_assert_eq!(decode_patient_key(&keys[0]), Some(id.as_str()));
            for b in [&vb, &fb, &vk.to_vec(), &dk].into_iter().chain(&keys) {
                decode_all(&damaged(b, &d));
            }
            if matches!(d, Damage::Truncate(_)) {
                prop_assert!(decode_frames(&damaged(&fb, &d)).is_none(), "a frames value cut short decoded");
            }
        }
    }
}
