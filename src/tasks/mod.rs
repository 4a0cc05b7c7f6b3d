//! The clinical tasks over embeddings (DESIGN §6): metrics and their bootstrap intervals.

pub mod metrics;

pub mod zeroshot;
