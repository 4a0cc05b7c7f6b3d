//! Which frames of a cine are embedded. Two presets from the EchoCLIP paper's code: zero-shot
//! readings use frames 0..40 with stride 2 (at most 20 frames); EchoCLIP-R retrieval embeddings
//! average all frames.
//!
//! **The frame bound.** A cine of more frames than `max_frames` (default
//! [`DEFAULT_MAX_FRAMES`], `--max-frames`) selected is thinned evenly: the sampling's step is
//! multiplied by the smallest whole `k` that brings the count within the bound
//! ([`FrameSampling::capped`]), so the frames kept are the first selected one and every `k`-th
//! after it — evenly spaced over the whole cine, between half the bound and the bound of them,
//! and still a `START:END:STEP` that the index records (zero-shot readings pick their frames
//! from it). A cine whose length is not known before decoding (a video whose container does not
//! say) doubles the step each time the kept frames pass the bound, dropping every other one
//! kept: the same kind of selection. Cines within the bound are embedded exactly as before.

use std::str::FromStr;

/// Frames embedded per video at most, by default. A cine of up to 512 selected frames (17 s at
/// 30 frames/s, 5 s at 100) is embedded whole; at the models' 224 px each kept frame holds
/// 147 KiB, so one video holds at most 75 MiB while it waits to be embedded.
pub const DEFAULT_MAX_FRAMES: usize = 512;

/// A frame selection: `start..end` (end exclusive, `None` = to the last frame) every `step`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameSampling {
    /// First frame.
    pub start: usize,
    /// One past the last frame considered; `None` for all.
    pub end: Option<usize>,
    /// Stride (≥ 1).
    pub step: usize,
}

impl FrameSampling {
    /// Zero-shot preset: frames 0, 2, ..., 38.
    pub const ZERO_SHOT: FrameSampling = FrameSampling { start: 0, end: Some(40), step: 2 };
    /// Retrieval preset: every frame.
    pub const ALL: FrameSampling = FrameSampling { start: 0, end: None, step: 1 };

    /// True when frame `i` is selected.
    pub fn selects(&self, i: usize) -> bool {
        i >= self.start && self.end.is_none_or(|e| i < e) && (i - self.start) % self.step.max(1) == 0
    }

    /// True when no frame at or after `i` can be selected (decoding may stop).
    pub fn done_after(&self, i: usize) -> bool {
        self.end.is_some_and(|e| i + 1 >= e)
    }
}

impl FromStr for FrameSampling {
    type Err = String;
    /// `zero-shot`, `all`, or `START:END:STEP` (END may be empty).
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "zero-shot" | "zeroshot" => return Ok(Self::ZERO_SHOT),
            "all" | "retrieval" => return Ok(Self::ALL),
            _ => {}
        }
        let bad = || format!("frame sampling '{s}': use zero-shot, all, or START:END:STEP (e.g. 0:40:2)");
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 3 {
            return Err(bad());
        }
        let start = parts[0].parse().map_err(|_| bad())?;
        let end = if parts[1].is_empty() { None } else { Some(parts[1].parse().map_err(|_| bad())?) };
        let step: usize = parts[2].parse().map_err(|_| bad())?;
        if step == 0 || end.is_some_and(|e| e <= start) {
            return Err(bad());
        }
        Ok(FrameSampling { start, end, step })
    }
}

impl std::fmt::Display for FrameSampling {
    /// `START:END:STEP` (END empty for all), which [`FromStr`] reads back.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.end {
            Some(e) => write!(f, "{}:{}:{}", self.start, e, self.step),
            None => write!(f, "{}::{}", self.start, self.step),
        }
    }
}

impl FrameSampling {
    /// How many of a cine's `n` frames this sampling selects.
    pub fn count(&self, n: usize) -> usize {
        let end = self.end.map_or(n, |e| e.min(n));
        if end <= self.start {
            0
        } else {
            (end - self.start - 1) / self.step.max(1) + 1
        }
    }

    /// This sampling with its step multiplied by `k` (≥ 1): every `k`-th of its frames.
    pub fn thinned(&self, k: usize) -> FrameSampling {
        FrameSampling { step: self.step.max(1) * k.max(1), ..*self }
    }

    /// This sampling thinned evenly so that it selects at most `max` of `n` frames: the step
    /// multiplied by the smallest `k` that does (see the module's note). `max` 0 is no bound.
    pub fn capped(&self, n: usize, max: usize) -> FrameSampling {
        let count = self.count(n);
        if max == 0 || count <= max {
            return *self;
        }
        self.thinned(count.div_ceil(max))
    }

    /// Frame index of the `row`-th frame this sampling selects (frames it stores in that order).
    pub fn frame_of_row(&self, row: usize) -> usize {
        self.start + row * self.step.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_shot_preset_takes_twenty_even_frames() {
        let picked: Vec<usize> = (0..100).filter(|&i| FrameSampling::ZERO_SHOT.selects(i)).collect();
        assert_eq!(picked, (0..40).step_by(2).collect::<Vec<_>>());
        assert!(FrameSampling::ZERO_SHOT.done_after(39));
        assert!(!FrameSampling::ALL.done_after(10_000));
        assert_eq!("1:10:3".parse::<FrameSampling>().unwrap(), FrameSampling { start: 1, end: Some(10), step: 3 });
        assert!("1:1:3".parse::<FrameSampling>().is_err());
        assert!("0::0".parse::<FrameSampling>().is_err());
        for s in [FrameSampling::ZERO_SHOT, FrameSampling::ALL, FrameSampling { start: 3, end: Some(9), step: 2 }] {
            assert_eq!(s.to_string().parse::<FrameSampling>().unwrap(), s);
        }
        assert_eq!(FrameSampling::ZERO_SHOT.frame_of_row(3), 6);
    }

    #[test]
    fn count_matches_selects() {
        for s in [FrameSampling::ALL, FrameSampling::ZERO_SHOT, FrameSampling { start: 3, end: Some(50), step: 7 }] {
            for n in [0, 1, 2, 3, 4, 39, 40, 41, 100] {
                assert_eq!(s.count(n), (0..n).filter(|&i| s.selects(i)).count(), "{s} of {n}");
            }
        }
    }

    #[test]
    fn capping_thins_evenly_within_the_bound_and_keeps_short_cines_whole() {
        let all = FrameSampling::ALL;
        assert_eq!(all.capped(512, 512), all, "at the bound: unchanged");
        assert_eq!(all.capped(600, 0), all, "0: no bound");
        let c = all.capped(600, 512);
        assert_eq!(c, FrameSampling { start: 0, end: None, step: 2 });
        assert_eq!(c.count(600), 300);
        for (n, max) in [(600, 512), (1000, 7), (513, 512), (100_000, 512), (37, 3)] {
            let c = all.capped(n, max);
            let kept: Vec<usize> = (0..n).filter(|&i| c.selects(i)).collect();
            assert!(kept.len() <= max && kept.len() * 2 >= max, "{n} frames, bound {max}: {} kept", kept.len());
            assert_eq!(kept[0], 0);
            assert!(kept.windows(2).all(|w| w[1] - w[0] == c.step), "evenly spaced");
            // The smallest such step: one less would exceed the bound.
            assert!(c.step == 1 || all.thinned(c.step - 1).count(n) > max);
        }
        // The zero-shot preset's 20 frames, bounded at 8: every third of them (0, 6, ..., 36).
        let z = FrameSampling::ZERO_SHOT.capped(100, 8);
        assert_eq!((0..100).filter(|&i| z.selects(i)).collect::<Vec<_>>(), vec![0, 6, 12, 18, 24, 30, 36]);
        assert_eq!(z.to_string(), "0:40:6");
    }
}
