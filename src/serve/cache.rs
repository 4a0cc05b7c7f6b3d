//! The query-text embedding cache: the text tower bounds text-query throughput on a CPU, and
//! dashboards and benchmark scripts repeat their queries. Least recently used texts are
//! dropped first. Embeddings depend only on the (fixed) model and the text.

use lru::LruCache;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

/// Texts → unit embeddings of the primary model, at most `capacity` of them (0: no cache).
#[derive(Debug)]
pub struct TextCache {
    lru: Option<Mutex<LruCache<String, Arc<Vec<f32>>>>>,
}

impl TextCache {
    /// A cache of `capacity` texts; 0 caches nothing.
    pub fn new(capacity: usize) -> TextCache {
        TextCache { lru: NonZeroUsize::new(capacity).map(|c| Mutex::new(LruCache::new(c))) }
    }

    /// The cached embedding of `text`, if any (marks it recently used).
    pub fn get(&self, text: &str) -> Option<Arc<Vec<f32>>> {
        let lru = self.lru.as_ref()?;
        lru.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(text).cloned()
    }

    /// Remembers the embedding of `text`.
    pub fn put(&self, text: &str, v: Arc<Vec<f32>>) {
        if let Some(lru) = &self.lru {
            lru.lock().unwrap_or_else(std::sync::PoisonError::into_inner).put(text.to_owned(), v);
        }
    }

    /// Texts held.
    pub fn len(&self) -> usize {
        self.lru.as_ref().map_or(0, |l| l.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_least_recently_used_text_goes_first() {
        let c = TextCache::new(2);
        c.put("a", Arc::new(vec![1.0]));
        c.put("b", Arc::new(vec![2.0]));
        assert_eq!(*c.get("a").unwrap(), vec![1.0]);
        c.put("c", Arc::new(vec![3.0]));
        assert!(c.get("b").is_none(), "b was the least recently used");
        assert!(c.get("a").is_some() && c.get("c").is_some());
        assert_eq!(c.len(), 2);
        let off = TextCache::new(0);
        off.put("a", Arc::new(vec![1.0]));
        assert!(off.get("a").is_none() && off.len() == 0);
    }
}
