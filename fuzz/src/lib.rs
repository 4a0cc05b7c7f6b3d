//! The DICOM modules of echovault, compiled on their own for fuzzing (same source files).
//! `src/media/dicom` refers to `super::Frame`: here its parent is this crate root.

#[path = "../../src/media/frame.rs"]
mod frame;

pub use frame::Frame;

#[path = "../../src/media/dicom/mod.rs"]
pub mod dicom;
