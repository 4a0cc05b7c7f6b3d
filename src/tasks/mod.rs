//! What the commands (and the server) do, as library calls returning typed results that the CLI
//! renders as text or JSON and the server returns as JSON: search (grouped or not) and the
//! clinical tasks over embeddings (DESIGN §6): zero-shot readings from prompt files,
//! re-identification, transitions and retrieval, their metrics and bootstrap intervals, and the
//! label manifests evaluations read.

pub mod manifest;
pub mod metrics;
pub mod pairs;
pub mod prompts;
pub mod search;
pub mod source;
pub mod zeroshot;
