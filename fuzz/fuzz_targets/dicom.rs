//! Fuzzes the DICOM entry point: any bytes after a preamble and `DICM` must open to a cine or a
//! `DicomError`, and every frame decode (first 4 frames) to a frame or an error — never a panic
//! or a hang. Frames above 4 megapixels are opened but not decoded here: the library allows
//! frames up to 512 MiB, which under AddressSanitizer's quarantine exhausts the fuzzer's memory
//! limit without testing anything new.
#![no_main]

use echovault_fuzz::dicom::DicomCine;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut bytes = vec![0u8; 128];
    bytes.extend_from_slice(b"DICM");
    bytes.extend_from_slice(data);
    if let Ok(cine) = DicomCine::from_bytes(bytes) {
        let info = cine.info();
        if info.rows.saturating_mul(info.cols) > 4_000_000 {
            return;
        }
        for i in 0..info.frames.min(4) {
            let _ = cine.frame(i);
        }
    }
});
