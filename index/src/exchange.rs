//! Reading an index out in bulk (`echovault export`): the live items of one collection with
//! their stored vectors (as stored: f32 or f16) and optionally their frame embeddings, in slot
//! order and in chunks, so that a caller streams any index in bounded memory. Also the
//! fingerprint of the patient-key secret, which an export records and an import checks.

use crate::codec::{self, Collection};
use crate::error::IndexError;
use crate::ids::{ItemId, Kind, Slot, SpaceId};
use crate::index::{corrupt, Index, VectorEncoding};
use crate::record::ItemRecord;
use crate::search::Filter;
use crate::store::{CF_FRAMES, CF_ITEMS, CF_META, CF_VECTORS, KEY_SECRET, KEY_SECRET_FINGERPRINT};

/// One live item of a collection, as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportRow {
    /// The item's metadata.
    pub record: ItemRecord,
    /// Its stored vector (unit length as committed; an f16 one as its halves read back).
    pub vector: Vec<f32>,
    /// How that vector is stored.
    pub encoding: VectorEncoding,
    /// Its per-frame embeddings (f16 precision), when asked for and stored.
    pub frames: Option<Vec<Vec<f32>>>,
}

/// The live items of one collection passing a filter, read chunk by chunk
/// ([`Index::export_rows`]).
#[derive(Debug)]
pub struct ExportRows<'a> {
    index: &'a Index,
    c: Collection,
    slots: Vec<Slot>,
    at: usize,
    frames: bool,
}

impl ExportRows<'_> {
    /// How many items pass the filter (rows still to come plus those read).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when no item passes the filter.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The next at most `n` rows, in slot order; `None` at the end. An item deleted or
    /// replaced since the rows were listed is left out.
    pub fn next_chunk(&mut self, n: usize) -> Result<Option<Vec<ExportRow>>, IndexError> {
        if self.at >= self.slots.len() {
            return Ok(None);
        }
        let end = (self.at + n.max(1)).min(self.slots.len());
        let slots = &self.slots[self.at..end];
        self.at = end;
        let ix = self.index;
        let cf_vec = ix.cf(CF_VECTORS)?;
        let mut vectors: Vec<(ItemId, Vec<f32>, VectorEncoding)> = Vec::with_capacity(slots.len());
        for (slot, v) in slots.iter().zip(ix.db.multi_get_cf(slots.iter().map(|s| (cf_vec, codec::vector_key(self.c, *s))))) {
            let Some(b) = v.map_err(|e| ix.storage(e))? else { continue };
            let encoding = match b.first() {
                Some(1) => VectorEncoding::F16,
                _ => VectorEncoding::F32,
            };
            let (id, v) = codec::decode_vector(&b).ok_or_else(|| corrupt(&ix.path, "vector", format!("slot {}", slot.0)))?;
            vectors.push((ItemId(id), v, encoding));
        }
        let cf_items = ix.cf(CF_ITEMS)?;
        let records = ix.db.multi_get_cf(vectors.iter().map(|(id, _, _)| (cf_items, id.0.as_bytes())));
        let frames: Vec<Option<Vec<Vec<f32>>>> = if self.frames && self.c.kind == Kind::Video {
            let cf_frames = ix.cf(CF_FRAMES)?;
            let got = ix.db.multi_get_cf(vectors.iter().map(|(id, _, _)| (cf_frames, codec::frames_key(self.c.space, &id.0))));
            got.into_iter()
                .zip(&vectors)
                .map(|(r, (id, _, _))| match r.map_err(|e| ix.storage(e))? {
                    Some(b) => codec::decode_frames(&b).map(Some).ok_or_else(|| corrupt(&ix.path, "frame embeddings", id.0.clone())),
                    None => Ok(None),
                })
                .collect::<Result<_, IndexError>>()?
        } else {
            vec![None; vectors.len()]
        };
        let mut out = Vec::with_capacity(vectors.len());
        for (((_, vector, encoding), rec), frames) in vectors.into_iter().zip(records).zip(frames) {
            let Some(b) = rec.map_err(|e| ix.storage(e))? else { continue };
            out.push(ExportRow { record: ix.decode_record(&b)?, vector, encoding, frames });
        }
        Ok(Some(out))
    }
}

impl Index {
    /// The live items of `kind` in `space` that pass `filter` (as a search's filter: patient,
    /// study, dates, exclusions), to be read in chunks in slot order; with `frames`, videos come
    /// with their frame embeddings. Only the list of slots is held (4 bytes an item).
    pub fn export_rows(&self, space: SpaceId, kind: Kind, filter: &Filter, frames: bool) -> Result<ExportRows<'_>, IndexError> {
        let c = Collection { space, kind };
        let slots = {
            let graphs = self.graphs.read().unwrap_or_else(|e| e.into_inner());
            match graphs.get(&c) {
                Some(g) => self.candidates(g, c, filter)?,
                None => Vec::new(),
            }
        };
        Ok(ExportRows { index: self, c, slots, at: 0, frames })
    }

    /// The fingerprint of this index's patient-key secret (HMAC-SHA-256 of a constant under it,
    /// [`crate::secret_fingerprint`]), whether the secret is stored in the index or kept in a
    /// file outside it (whose fingerprint the index keeps); `None` for an index without one.
    /// Enough to tell whether two indexes key patients alike, useless for making keys.
    pub fn secret_fingerprint(&self) -> Result<Option<[u8; 32]>, IndexError> {
        let cf = self.cf(CF_META)?;
        if let Some(s) = self.db.get_cf(cf, KEY_SECRET).map_err(|e| self.storage(e))? {
            let s: [u8; 32] = s.as_slice().try_into().map_err(|_| corrupt(&self.path, "patient secret", "not 32 bytes"))?;
            return Ok(Some(crate::secret::fingerprint(&s)));
        }
        match self.db.get_cf(cf, KEY_SECRET_FINGERPRINT).map_err(|e| self.storage(e))? {
            Some(f) => f.as_slice().try_into().map(Some).map_err(|_| corrupt(&self.path, "patient secret fingerprint", "not 32 bytes")),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::{Filter, Index, IndexOptions, ItemRecord, Kind, StudyDate, VectorEncoding};

    fn unit(i: usize, dim: usize) -> Vec<f32> {
        let mut v: Vec<f32> = (0..dim).map(|j| ((i * 31 + j * 7) % 13) as f32 - 6.0).collect();
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= n);
        v
    }

    #[test]
    fn export_rows_are_the_live_filtered_items_with_their_stored_vectors() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
        let space = index.ensure_space("s", 8).unwrap();
        let mut b = index.batch();
        for i in 0..10 {
            let mut r = ItemRecord::new(format!("v{i}"), Kind::Video, "x");
            r.patient = Some(format!("p{}", i % 2));
            r.date = Some(StudyDate::new(2020, 1, 1 + i as u8).unwrap());
            b.put_item(r);
            b.put_vector(space, format!("v{i}"), Kind::Video, unit(i, 8));
            b.put_frames(space, format!("v{i}"), vec![unit(i + 1, 8), unit(i + 2, 8)]);
        }
        index.commit(b).unwrap();
        // A replaced vector and a deleted item are not listed.
        let mut b = index.batch();
        b.put_vector(space, "v2", Kind::Video, unit(99, 8));
        b.delete_item("v4");
        index.commit(b).unwrap();
        let filter = Filter { patient: Some("p0".into()), ..Filter::default() };
        let mut rows = index.export_rows(space, Kind::Video, &filter, true).unwrap();
        assert_eq!(rows.len(), 4);
        let mut got = Vec::new();
        while let Some(chunk) = rows.next_chunk(3).unwrap() {
            assert!(chunk.len() <= 3);
            got.extend(chunk);
        }
        let ids: Vec<&str> = got.iter().map(|r| r.record.id.as_str()).collect();
        assert_eq!(ids, ["v0", "v6", "v8", "v2"], "slot order: v2's new vector was written last");
        for r in &got {
            assert_eq!(Some(r.vector.clone()), index.get_vector(space, Kind::Video, &r.record.id).unwrap());
            assert_eq!(r.frames, index.get_frames(space, &r.record.id).unwrap());
            assert_eq!(r.encoding, VectorEncoding::F32);
        }
        assert!(index.export_rows(space, Kind::Report, &Filter::default(), false).unwrap().is_empty());
        let fp = index.secret_fingerprint().unwrap().unwrap();
        assert_eq!(fp, crate::secret_fingerprint(index.secret().unwrap()));
    }
}
