//! What the commands (and the server) do, as library calls returning typed results that the CLI
//! renders as text or JSON and the server returns as JSON (`serde_json::to_value` of a result is
//! exactly what the command's `--json` prints): [`search`] (grouped or not), [`readings`]
//! (`zero-shot`), [`reid`], [`timeline`] and [`eval`]; each takes a request whose serde field
//! names are the CLI's flags and a [`context::TaskContext`] (the model and the index).
//!
//! Beneath them, the clinical tasks over embeddings (DESIGN §6): zero-shot readings from prompt
//! files ([`zeroshot`], [`prompts`]), re-identification, transitions and retrieval ([`pairs`]),
//! their metrics and bootstrap intervals ([`metrics`]), the label manifests evaluations read
//! ([`manifest`]) and where embeddings come from ([`source`]).

pub mod context;
pub mod eval;
pub mod manifest;
pub mod metrics;
pub mod pairs;
pub mod prompts;
pub mod readings;
pub mod reid;
pub mod search;
pub mod source;
pub mod timeline;
pub mod zeroshot;
