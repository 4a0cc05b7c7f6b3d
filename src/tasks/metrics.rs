//! Evaluation metrics: AUC, MAE, ranks, and percentile bootstrap confidence intervals with a
//! seeded generator simple enough to re-implement anywhere (SplitMix64), so that an independent
//! implementation fed the same scores reproduces the intervals exactly.

use serde::Serialize;

/// Area under the ROC curve of scores for positives vs negatives (Mann–Whitney U / (|P|·|N|),
/// ties counted half). `None` when either side is empty.
pub fn auc(pos: &[f64], neg: &[f64]) -> Option<f64> {
    if pos.is_empty() || neg.is_empty() {
        return None;
    }
    // Midranks of all scores together.
    let mut all: Vec<(f64, bool)> = pos.iter().map(|&s| (s, true)).chain(neg.iter().map(|&s| (s, false))).collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut rank_sum_pos = 0.0;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j + 1 < all.len() && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        let mid = (i + j) as f64 / 2.0 + 1.0;
        rank_sum_pos += all[i..=j].iter().filter(|x| x.1).count() as f64 * mid;
        i = j + 1;
    }
    let (np, nn) = (pos.len() as f64, neg.len() as f64);
    Some((rank_sum_pos - np * (np + 1.0) / 2.0) / (np * nn))
}

/// Mean absolute error. `None` for no pairs.
pub fn mae(pred: &[f64], truth: &[f64]) -> Option<f64> {
    if pred.is_empty() || pred.len() != truth.len() {
        return None;
    }
    Some(pred.iter().zip(truth).map(|(p, t)| (p - t).abs()).sum::<f64>() / pred.len() as f64)
}

/// 1-based rank of `scores[truth]` among `scores` (higher is better; ties count against the
/// truth: every other candidate scoring at least as high ranks before it).
pub fn rank_of(scores: &[f32], truth: usize) -> usize {
    let t = scores[truth];
    1 + scores.iter().enumerate().filter(|&(i, &s)| i != truth && s >= t).count()
}

/// SplitMix64: the bootstrap's generator.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// An index below `n` (`next_u64() % n`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// A figure with its 95 % bootstrap confidence interval.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Estimate {
    /// On all units.
    pub value: f64,
    /// 2.5th percentile of the bootstrap distribution.
    pub lo: f64,
    /// 97.5th percentile.
    pub hi: f64,
    /// Resamples drawn.
    pub resamples: usize,
    /// Resamples where the statistic was undefined (e.g. no positives), left out.
    pub undefined: usize,
}

/// Default bootstrap resamples.
pub const BOOTSTRAP_RESAMPLES: usize = 1000;
/// Default bootstrap seed.
pub const BOOTSTRAP_SEED: u64 = 20240101;

/// Percentile bootstrap of `stat` over `n` units: each resample draws `n` unit indices with
/// replacement (`below(n)` n times, in order), and the interval is the 2.5th and 97.5th
/// percentiles (linear interpolation, as numpy's default) of the defined resample values.
pub fn bootstrap(n: usize, resamples: usize, seed: u64, stat: impl Fn(&[usize]) -> Option<f64>) -> Option<Estimate> {
    let all: Vec<usize> = (0..n).collect();
    let value = stat(&all)?;
    let mut rng = SplitMix64::new(seed);
    let mut values = Vec::with_capacity(resamples);
    let mut idx = vec![0usize; n];
    for _ in 0..resamples {
        for x in idx.iter_mut() {
            *x = rng.below(n);
        }
        if let Some(v) = stat(&idx) {
            values.push(v);
        }
    }
    let undefined = resamples - values.len();
    values.sort_by(f64::total_cmp);
    let (lo, hi) = if values.is_empty() { (f64::NAN, f64::NAN) } else { (percentile(&values, 2.5), percentile(&values, 97.5)) };
    Some(Estimate { value, lo, hi, resamples, undefined })
}

/// The `q`-th percentile of sorted values, linear interpolation between closest ranks.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    let pos = q / 100.0 * (sorted.len() - 1) as f64;
    let (f, c) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[f] + (sorted[c] - sorted[f]) * (pos - f as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_counts_pairs_and_half_ties() {
        assert_eq!(auc(&[3.0, 4.0], &[1.0, 2.0]), Some(1.0));
        assert_eq!(auc(&[1.0, 2.0], &[3.0, 4.0]), Some(0.0));
        assert_eq!(auc(&[1.0], &[1.0]), Some(0.5));
        // Brute force over pairs on a mixed case with ties.
        let (p, n) = ([0.3, 0.5, 0.5, 0.9], [0.1, 0.5, 0.7]);
        let pairs: f64 = p
            .iter()
            .flat_map(|a| {
                n.iter().map(move |b| {
                    if a > b {
                        1.0
                    } else if a == b {
                        0.5
                    } else {
                        0.0
                    }
                })
            })
            .sum();
        assert!((auc(&p, &n).unwrap_or(-1.0) - pairs / 12.0).abs() < 1e-12);
        assert_eq!(auc(&[], &[1.0]), None);
    }

    #[test]
    fn ranks_and_mae() {
        assert_eq!(rank_of(&[0.1, 0.9, 0.5], 1), 1);
        assert_eq!(rank_of(&[0.1, 0.9, 0.5], 0), 3);
        assert_eq!(rank_of(&[0.5, 0.5], 1), 2, "ties rank against the truth");
        assert_eq!(mae(&[1.0, 3.0], &[2.0, 2.0]), Some(1.0));
    }

    #[test]
    fn splitmix_matches_its_published_sequence_and_bootstrap_brackets_the_mean() {
        // First outputs of SplitMix64 seeded with 0 (Vigna's reference implementation).
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        let xs: Vec<f64> = (0..200).map(|i| (i % 17) as f64).collect();
        let e = bootstrap(xs.len(), 1000, 7, |idx| Some(idx.iter().map(|&i| xs[i]).sum::<f64>() / idx.len() as f64)).unwrap();
        assert!(e.lo < e.value && e.value < e.hi, "{e:?}");
        assert!(e.hi - e.lo < 2.0 && e.undefined == 0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 50.0), 2.5);
    }
}
