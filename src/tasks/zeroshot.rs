//! Zero-shot readings from frame embeddings and prompt embeddings (DESIGN §6). All inputs are
//! unit vectors; similarities are dot products.

/// Dot product, accumulated in f64 (so that an independent implementation ranks alike).
pub fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum()
}

/// Binary score: the mean cosine of every frame with every prompt (averaged over prompts and
/// frames). Used as the score of an AUC. `None` without frames or prompts.
pub fn binary_score(frames: &[Vec<f32>], prompts: &[Vec<f32>]) -> Option<f64> {
    if frames.is_empty() || prompts.is_empty() {
        return None;
    }
    let total: f64 = frames.iter().flat_map(|f| prompts.iter().map(move |p| dot(f, p))).sum();
    Some(total / (frames.len() * prompts.len()) as f64)
}

/// Regression estimate: for each frame, the prompts ranked by similarity (most similar first,
/// ties by prompt order) and mapped to their values; the ranked value lists averaged over frames
/// position by position; the lower median of the first `head` fraction (DESIGN: 20 %) of
/// positions, rounded down as the reference's `int(n * 0.2)` does (at least one). `None`
/// without frames or prompts, or when the counts differ.
pub fn regression_estimate(frames: &[Vec<f32>], prompts: &[Vec<f32>], values: &[f64], head: f64) -> Option<f64> {
    if frames.is_empty() || prompts.is_empty() || prompts.len() != values.len() {
        return None;
    }
    let mut avg = vec![0.0; values.len()];
    for f in frames {
        let sims: Vec<f64> = prompts.iter().map(|p| dot(f, p)).collect();
        let mut order: Vec<usize> = (0..values.len()).collect();
        // Stable: equal similarities keep prompt order.
        order.sort_by(|&a, &b| sims[b].total_cmp(&sims[a]));
        for (pos, &i) in order.iter().enumerate() {
            avg[pos] += values[i];
        }
    }
    avg.iter_mut().for_each(|x| *x /= frames.len() as f64);
    let top = ((values.len() as f64 * head).floor() as usize).clamp(1, values.len());
    let mut first = avg[..top].to_vec();
    first.sort_by(f64::total_cmp);
    Some(first[(top - 1) / 2])
}

/// Categorical reading: the binary score of each class's prompts; the best class's index and
/// all scores. `None` without classes or frames.
pub fn categorical(frames: &[Vec<f32>], classes: &[Vec<Vec<f32>>]) -> Option<(usize, Vec<f64>)> {
    let scores: Vec<f64> = classes.iter().map(|p| binary_score(frames, p)).collect::<Option<_>>()?;
    if scores.is_empty() {
        return None;
    }
    // The first of equal best scores (as numpy's argmax).
    let mut best = 0;
    for (i, s) in scores.iter().enumerate() {
        if *s > scores[best] {
            best = i;
        }
    }
    Some((best, scores))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(v: &[f32]) -> Vec<f32> {
        let n = dot(v, v).sqrt() as f32;
        v.iter().map(|x| x / n).collect()
    }

    #[test]
    fn binary_is_the_mean_over_frames_and_prompts() {
        let frames = vec![unit(&[1.0, 0.0]), unit(&[0.0, 1.0])];
        let prompts = vec![unit(&[1.0, 0.0]), unit(&[1.0, 1.0])];
        let expected = (1.0 + 0.5f64.sqrt() + 0.0 + 0.5f64.sqrt()) / 4.0;
        assert!((binary_score(&frames, &prompts).unwrap_or(0.0) - expected).abs() < 1e-6);
        assert_eq!(binary_score(&[], &prompts), None);
    }

    #[test]
    fn regression_takes_the_lower_median_of_the_top_ranked_values() {
        // Prompts on a half circle, values 0..=90 by 10; a frame near the 40 prompt ranks 40,
        // then 30/50, 20/60...: top 20 % of 10 = 2 positions → lower median of {40, 30|50}.
        let values: Vec<f64> = (0..10).map(|i| f64::from(i * 10)).collect();
        let prompts: Vec<Vec<f32>> = (0..10)
            .map(|i| {
                let a = i as f32 * 0.15;
                vec![a.cos(), a.sin()]
            })
            .collect();
        let a = 4.0f32 * 0.15 + 0.01;
        let frames = vec![vec![a.cos(), a.sin()]; 3];
        let est = regression_estimate(&frames, &prompts, &values, 0.2).unwrap_or(-1.0);
        assert_eq!(est, 40.0);
        // Two frames disagreeing: positions averaged, then the lower median.
        let b = 8.0f32 * 0.15;
        let frames = vec![vec![a.cos(), a.sin()], vec![b.cos(), b.sin()]];
        let est = regression_estimate(&frames, &prompts, &values, 0.2).unwrap_or(-1.0);
        // Position 0: (40 + 80) / 2 = 60; position 1: (50 + 70|90) / 2 ≥ 60; lower median 60.
        assert_eq!(est, 60.0);
        assert_eq!(regression_estimate(&frames, &prompts, &values[..3], 0.2), None);
    }

    #[test]
    fn present_means_strictly_above_the_threshold() {
        // One frame, one prompt: the score is their dot product, 0.6 * 1 + 0.8 * 0 exactly as f64.
        let frames = vec![vec![0.6f32, 0.8]];
        let prompts = vec![vec![1.0f32, 0.0]];
        let score = f64::from(0.6f32);
        let present = |t: f64| match read(&frames, &EmbeddedTask::Binary(prompts.clone(), Some(t))) {
            Some(Reading::Binary { present, .. }) => present,
            other => panic!("{other:?}"),
        };
        assert_eq!(present(score), Some(false), "a score equal to the threshold is absent");
        assert_eq!(present(score - 1e-12), Some(true));
        assert_eq!(read(&frames, &EmbeddedTask::Binary(prompts.clone(), None)), Some(Reading::Binary { score, present: None }));
    }

    #[test]
    fn categorical_picks_the_best_class() {
        let frames = vec![unit(&[0.9, 0.1])];
        let classes = vec![vec![unit(&[0.0, 1.0])], vec![unit(&[1.0, 0.0])]];
        assert_eq!(categorical(&frames, &classes).map(|c| c.0), Some(1));
    }
}

/// A task's prompts embedded, ready to read videos with.
#[derive(Clone, Debug)]
pub enum EmbeddedTask {
    /// Prompt embeddings; optional presence threshold (present when the score is strictly above).
    Binary(Vec<Vec<f32>>, Option<f64>),
    /// Prompt embeddings with their values.
    Regression(Vec<Vec<f32>>, Vec<f64>),
    /// Class names with their prompt embeddings.
    Categorical(Vec<(String, Vec<Vec<f32>>)>),
}

/// What a task reads from one video.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum Reading {
    /// Mean cosine; `present` when the task has a threshold.
    Binary {
        /// The score.
        score: f64,
        /// Score > threshold (strictly: the reference reads a pacemaker as present when its
        /// score is > 0.298).
        #[serde(skip_serializing_if = "Option::is_none")]
        present: Option<bool>,
    },
    /// The estimated value.
    Regression {
        /// The estimate.
        value: f64,
    },
    /// The best class and every class's score.
    Categorical {
        /// Best class.
        class: String,
        /// Class → score, in class order.
        scores: Vec<(String, f64)>,
    },
}

impl Reading {
    /// The number an evaluation uses: the score, the value, or the best class's score.
    pub fn number(&self) -> f64 {
        match self {
            Reading::Binary { score, .. } => *score,
            Reading::Regression { value } => *value,
            Reading::Categorical { scores, class } => scores.iter().find(|(c, _)| c == class).map_or(f64::NAN, |s| s.1),
        }
    }
}

/// Reads one task from a video's unit frame embeddings. `None` without frames.
pub fn read(frames: &[Vec<f32>], task: &EmbeddedTask) -> Option<Reading> {
    match task {
        EmbeddedTask::Binary(p, threshold) => {
            let score = binary_score(frames, p)?;
            Some(Reading::Binary { score, present: threshold.map(|t| score > t) })
        }
        EmbeddedTask::Regression(p, values) => Some(Reading::Regression { value: regression_estimate(frames, p, values, 0.2)? }),
        EmbeddedTask::Categorical(classes) => {
            let embs: Vec<Vec<Vec<f32>>> = classes.iter().map(|c| c.1.clone()).collect();
            let (best, scores) = categorical(frames, &embs)?;
            Some(Reading::Categorical { class: classes[best].0.clone(), scores: classes.iter().map(|c| c.0.clone()).zip(scores).collect() })
        }
    }
}
