//! Which frames of a cine are embedded. Two presets from the EchoCLIP paper's code: zero-shot
//! readings use frames 0..40 with stride 2 (at most 20 frames); EchoCLIP-R retrieval embeddings
//! average all frames.

use std::str::FromStr;

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
}
