//! Fuzzes the DICOM entry point: any bytes after a preamble and `DICM` must open to a cine or a
//! `DicomError`, and every frame decode (first 4 frames) to a frame or an error — never a panic,
//! a hang or an allocation beyond the frame limit.
#![no_main]

use echovault_fuzz::dicom::DicomCine;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut bytes = vec![0u8; 128];
    bytes.extend_from_slice(b"DICM");
    bytes.extend_from_slice(data);
    if let Ok(cine) = DicomCine::from_bytes(bytes) {
        for i in 0..cine.info().frames.min(4) {
            let _ = cine.frame(i);
        }
    }
});
