//! The DICOM modules of echovault, compiled on their own for fuzzing (same source files).

#[path = "../../src/media/frame.rs"]
mod frame;

/// Mirrors `echovault::media` so that `super::Frame` resolves in the DICOM module.
pub mod media {
    pub use crate::frame::Frame;
    #[path = "../../../src/media/dicom/mod.rs"]
    pub mod dicom;
}
