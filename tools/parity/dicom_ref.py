"""Third-party DICOM test files and pydicom's decoded frames, for tests/dicom.rs.

    dicom_ref.py fetch CACHE            -> prints {"name": path} for every test file (JSON)
    dicom_ref.py frames FILE OUT [N]    -> writes OUT/frame_NNNN.rgb (8-bit RGB, rows*cols*3) for
                                           the first N frames (all when absent), prints metadata

Files come from PyPI only: the pinned `pydicom` wheel in the venv (its data/test_files) and the
`pydicom-data` wheel, downloaded into CACHE and checked against a pinned SHA-256. Nothing here
is committed to the repository.

Frames are pydicom 3 + pylibjpeg output (`pixel_array`, which converts YBR to RGB), brought to
8-bit RGB by the same documented rules as echovault: PALETTE COLOR through `apply_color_lut`
(16-bit entries keep their high byte), grey replicated to three channels, samples deeper than
8 bits through the first VOI window when the file has one (DICOM's linear function), else
shifted down to their 8 high stored bits, MONOCHROME1 inverted.
"""

import hashlib
import json
import os
import subprocess
import sys
import zipfile

import numpy as np

PYDICOM_DATA = ("pydicom-data", "1.0.0", "pydicom_data-1.0.0-py3-none-any.whl",
                "622ac97265f1d91f76b5120b5bd6eb0f57737c392ef863b72c71779c91e33637")

# (name, where): "wheel" = pydicom's own test files, "data" = pydicom-data.
FILES = [
    ("examples_ybr_color.dcm", "wheel"),      # apical 4-chamber echo, JPEG baseline YBR_FULL_422, 30 frames
    ("examples_rgb_color.dcm", "wheel"),      # US, native RGB
    ("examples_palette.dcm", "wheel"),        # US, PALETTE COLOR 8-bit
    ("examples_jpeg2k.dcm", "wheel"),         # US, JPEG 2000 YBR_RCT
    ("SC_ybr_full_422_uncompressed.dcm", "wheel"),
    ("SC_rgb_rle_2frame.dcm", "wheel"),
    ("SC_rgb_rle_16bit_2frame.dcm", "wheel"),
    ("SC_rgb_jpeg_dcmtk.dcm", "wheel"),       # JPEG baseline YBR_FULL
    ("SC_rgb_dcmtk_+eb+cy+s2.dcm", "wheel"),  # JPEG baseline YBR_FULL_422
    ("SC_rgb_dcmtk_+eb+cr.dcm", "wheel"),     # JPEG baseline, RGB components
    ("SC_rgb_small_odd.dcm", "wheel"),
    ("MR_small_RLE.dcm", "wheel"),            # RLE, signed 16-bit MONOCHROME2
    ("MR_small_bigendian.dcm", "wheel"),
    ("MR_small_implicit.dcm", "wheel"),
    ("color3d_jpeg_baseline.dcm", "data"),    # US, 120 frames JPEG baseline, empty offset table
    ("US1_UNCR.dcm", "data"),
    ("US1_UNCI.dcm", "data"),
    ("US1_J2KR.dcm", "data"),
    ("US1_J2KI.dcm", "data"),
    ("OBXXXX1A.dcm", "data"),                 # US, PALETTE COLOR
    ("OBXXXX1A_2frame.dcm", "data"),
    ("OBXXXX1A_expb.dcm", "data"),
    ("OBXXXX1A_expb_2frame.dcm", "data"),
    ("OBXXXX1A_rle.dcm", "data"),
    ("OBXXXX1A_rle_2frame.dcm", "data"),
    ("gdcm-US-ALOKA-16.dcm", "data"),         # US, PALETTE COLOR 16-bit, implicit VR
    ("gdcm-US-ALOKA-16_big.dcm", "data"),
    ("JPGLosslessP14SV1_1s_1f_8b.dcm", "data"),  # US, JPEG lossless
    ("color-pl.dcm", "data"),                 # US, RGB planar configuration 1
    ("color-px.dcm", "data"),
    ("SC_rgb_expb_2frame.dcm", "data"),
    ("SC_rgb_expb_16bit_2frame.dcm", "data"),
    ("SC_rgb_32bit_2frame.dcm", "data"),
    ("SC_ybr_full_uncompressed.dcm", "data"),
    ("emri_small_RLE.dcm", "data"),           # 10 frames, 12-bit MONOCHROME2
    ("emri_small_jpeg_2k_lossless.dcm", "data"),
    ("emri_small_big_endian.dcm", "data"),
    ("RG1_UNCR.dcm", "data"),                 # MONOCHROME1
    ("vlut_04.dcm", "data"),                  # 8-bit MONOCHROME2
    ("MR_small_jpeg_ls_lossless.dcm", "wheel"),  # JPEG-LS lossless, signed 16-bit
    ("JPEGLSNearLossless_08.dcm", "wheel"),   # JPEG-LS near-lossless, 8-bit
    ("JPEGLSNearLossless_16.dcm", "wheel"),   # JPEG-LS near-lossless, 16-bit
    ("SC_rgb_jls_lossy_line.dcm", "wheel"),   # JPEG-LS near-lossless RGB, line interleaved
    ("SC_rgb_jls_lossy_sample.dcm", "wheel"), # JPEG-LS near-lossless RGB, sample interleaved
    ("emri_small_jpeg_ls_lossless.dcm", "data"),  # JPEG-LS lossless, 12-bit, 10 frames
    ("JPGExtended.dcm", "wheel"),             # JPEG extended 12-bit lossy, MONOCHROME2
    ("test-SR.dcm", "wheel"),                 # a structured report (no image)
]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(cache):
    import pydicom
    os.makedirs(cache, exist_ok=True)
    name, version, wheel, digest = PYDICOM_DATA
    whl = os.path.join(cache, wheel)
    if not os.path.exists(whl) or sha256(whl) != digest:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", cache,
                        f"{name}=={version}"], check=True, stdout=sys.stderr)
    got = sha256(whl)
    if got != digest:
        sys.exit(f"{whl}: sha256 {got}, expected {digest}")
    data_dir = os.path.join(cache, "pydicom-data")
    if not os.path.isdir(data_dir):
        with zipfile.ZipFile(whl) as z:
            for m in z.namelist():
                if m.startswith("data_store/data/") and m.endswith(".dcm"):
                    os.makedirs(data_dir, exist_ok=True)
                    with open(os.path.join(data_dir, os.path.basename(m)), "wb") as out:
                        out.write(z.read(m))
    wheel_dir = os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files")
    out = {}
    for fname, where in FILES:
        p = os.path.join(wheel_dir if where == "wheel" else data_dir, fname)
        if not os.path.exists(p):
            sys.exit(f"{fname} missing from {where}")
        out[fname] = p
    out["dicomdirtests"] = os.path.join(wheel_dir, "dicomdirtests")
    print(json.dumps(out))


def meta(path):
    """Identifiers pydicom reads (for the ingest test)."""
    import pydicom
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    print(json.dumps({"patient_id": str(ds.get("PatientID", "")), "study_uid": str(ds.get("StudyInstanceUID", "")),
                      "sop_uid": str(ds.get("SOPInstanceUID", "")), "study_date": str(ds.get("StudyDate", "")),
                      "transfer_syntax": str(ds.file_meta.TransferSyntaxUID)}))


def set_patient(src, dst, patient_id):
    """A copy of src with another PatientID (to check it never leaks)."""
    import pydicom
    ds = pydicom.dcmread(src)
    ds.PatientID = patient_id
    ds.save_as(dst, enforce_file_format=True)


def set_ts(src, dst, uid):
    """A copy of src labelled with another transfer syntax (same pixel data bytes)."""
    import pydicom
    ds = pydicom.dcmread(src)
    ds.file_meta.TransferSyntaxUID = uid
    ds.save_as(dst, enforce_file_format=True)


def dicomdir_images(path):
    """Files a DICOMDIR references through IMAGE records."""
    import pydicom
    ds = pydicom.dcmread(path)
    base = os.path.dirname(path)
    out = []
    for rec in ds.DirectoryRecordSequence:
        if rec.DirectoryRecordType == "IMAGE" and "ReferencedFileID" in rec:
            parts = rec.ReferencedFileID
            parts = [parts] if isinstance(parts, str) else list(parts)
            out.append(os.path.join(base, *parts))
    print(json.dumps(sorted(out)))


def to_rgb8(ds, arr):
    """pydicom's decoded frame -> 8-bit RGB by echovault's documented rules."""
    import pydicom
    from pydicom.pixels import apply_color_lut
    pi = ds.PhotometricInterpretation
    bits = int(ds.BitsStored)
    signed = int(getattr(ds, "PixelRepresentation", 0)) == 1
    if pi == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        if rgb.dtype != np.uint8:
            rgb = (rgb >> 8).astype(np.uint8)
        return rgb
    a = arr.astype(np.int64)
    window = None
    if arr.ndim == 2 and (bits > 8 or signed) and "WindowCenter" in ds and "WindowWidth" in ds:
        first = lambda v: float(v[0]) if isinstance(v, pydicom.multival.MultiValue) else float(v)
        window = (first(ds.WindowCenter), first(ds.WindowWidth))
    if window is not None and window[1] >= 1:
        c, w = window
        x = a.astype(np.float64)
        y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255.0
        y = np.where(x <= c - 0.5 - (w - 1) / 2, 0.0, np.where(x > c - 0.5 + (w - 1) / 2, 255.0, y))
        a = np.clip(np.floor(y + 0.5), 0, 255).astype(np.uint8)
    else:
        if signed:
            a = a + (1 << (bits - 1))
        if bits > 8:
            a = a >> (bits - 8)
        a = np.clip(a, 0, 255).astype(np.uint8)
    if a.ndim == 2:
        if pi == "MONOCHROME1":
            a = 255 - a
        a = np.stack([a, a, a], axis=-1)
    return a


def frames(path, out, n=None):
    import pydicom
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array
    nframes = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if nframes == 1:
        arr = arr[None]
    os.makedirs(out, exist_ok=True)
    count = nframes if n is None else min(n, nframes)
    for i in range(count):
        rgb = to_rgb8(ds, arr[i])
        with open(os.path.join(out, f"frame_{i:04d}.rgb"), "wb") as f:
            f.write(np.ascontiguousarray(rgb).tobytes())
    print(json.dumps({"frames": nframes, "written": count, "rows": int(ds.Rows), "cols": int(ds.Columns),
                      "photometric": ds.PhotometricInterpretation,
                      "transfer_syntax": str(ds.file_meta.TransferSyntaxUID)}))


if __name__ == "__main__":
    if sys.argv[1] == "fetch":
        fetch(sys.argv[2])
    elif sys.argv[1] == "meta":
        meta(sys.argv[2])
    elif sys.argv[1] == "set-patient":
        set_patient(sys.argv[2], sys.argv[3], sys.argv[4])
    elif sys.argv[1] == "set-ts":
        set_ts(sys.argv[2], sys.argv[3], sys.argv[4])
    elif sys.argv[1] == "dicomdir":
        dicomdir_images(sys.argv[2])
    elif sys.argv[1] == "frames":
        frames(sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else None)
    else:
        sys.exit(__doc__)
