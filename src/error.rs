//! The error type of the `echovault` library. Every variant names the file or item concerned
//! and, where there is one, what the user can do.

use std::path::PathBuf;

/// Everything the echovault library can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The index refused an operation.
    #[error(transparent)]
    Index(#[from] echovault_index::IndexError),
    /// A model directory is unusable.
    #[error("model {dir}: {reason}")]
    Model {
        /// The snapshot directory.
        dir: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A checkpoint lacks a weight the config requires.
    #[error("model {dir}: missing weight '{key}' (expected shape {expected:?}); is this an open_clip ConvNeXt CLIP checkpoint?")]
    MissingWeight {
        /// The snapshot directory.
        dir: PathBuf,
        /// State-dict key.
        key: String,
        /// Shape the config implies.
        expected: Vec<i64>,
    },
    /// A weight's shape disagrees with the config.
    #[error("model {dir}: weight '{key}' has shape {found:?}, the config implies {expected:?}")]
    WeightShape {
        /// The snapshot directory.
        dir: PathBuf,
        /// State-dict key.
        key: String,
        /// Shape the config implies.
        expected: Vec<i64>,
        /// Shape in the checkpoint.
        found: Vec<i64>,
    },
    /// A checkpoint holds weights that the config does not use.
    #[error("model {dir}: unexpected weights not used by the config: {keys:?}")]
    UnexpectedWeights {
        /// The snapshot directory.
        dir: PathBuf,
        /// Unused state-dict keys (first few).
        keys: Vec<String>,
    },
    /// LibTorch failed (out of memory, bad device...).
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// A tokenizer file is unusable or a text could not be tokenised.
    #[error("tokenizer {path}: {reason}")]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A media file could not be read or decoded.
    #[error("{path}: {reason}")]
    Media {
        /// The input file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A user-supplied value is invalid.
    #[error("{0}")]
    Invalid(String),
    /// A hub model (`hf:OWNER/NAME[@REV]`) could not be parsed, found or fetched.
    #[error("{model}: {reason}")]
    Hub {
        /// The model as given (`hf:OWNER/NAME@REV`).
        model: String,
        /// What went wrong and what to do (never the token).
        reason: String,
    },
}

impl Error {
    /// Shorthand for [`Error::Media`].
    pub fn media(path: impl Into<PathBuf>, reason: impl ToString) -> Self {
        Error::Media { path: path.into(), reason: reason.to_string() }
    }

    /// Shorthand for [`Error::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}
