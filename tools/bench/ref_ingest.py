#!/usr/bin/env python3
"""The reference way of embedding an archive, as a peer for tools/bench-ingest: one video at a
time in a Python loop — read every frame with OpenCV, crop and resize each (cv2 INTER_CUBIC, the
reference's preprocessing, see tools/parity/preprocess_ref.py), keep the sampled frames, encode
them with open_clip in one forward pass, L2-normalise, average, keep the vector. Written from
the description of the reference's loop, not from its code.
Usage: ref_ingest.py MODEL_DIR VIDEO_DIR START END STEP  → one JSON line: videos, frames, seconds."""
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "parity"))
import common  # noqa: E402
from preprocess_ref import MEAN, STD, crop_and_scale, read_bgr_frames  # noqa: E402


def main():
    model_dir, video_dir = sys.argv[1:3]
    start, end, step = (int(x) if x else None for x in sys.argv[3:6])
    model = common.load_model(model_dir)
    size = model.visual.image_size[0] if isinstance(model.visual.image_size, (tuple, list)) else model.visual.image_size
    paths = sorted(os.path.join(r, f) for r, _, fs in os.walk(video_dir) for f in fs if f.endswith(".avi"))
    t0 = time.perf_counter()
    vectors, frames_done = {}, 0
    with torch.no_grad():
        for p in paths:
            frames = [crop_and_scale(f, size) for f in read_bgr_frames(p)]
            x = np.stack(frames)[start:end:step]
            x = torch.from_numpy(((x.astype(np.float32) / 255.0 - MEAN) / STD)).permute(0, 3, 1, 2).contiguous()
            e = model.encode_image(x, normalize=True).mean(0)
            vectors[p] = (e / e.norm()).numpy()
            frames_done += x.shape[0]
    secs = time.perf_counter() - t0
    print(json.dumps({"videos": len(vectors), "frames": frames_done, "seconds": secs, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
