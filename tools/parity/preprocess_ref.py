#!/usr/bin/env python3
"""The reference preprocessing, written from its description (DESIGN §5), on frames read by
OpenCV. Usage: preprocess_ref.py VIDEO OUT.safetensors
OUT: `frames_bgr` [N,H,W,3] uint8 as cv2 decoded them, and `pixels` [N,3,224,224] f32: centre
crop to square, 10 % cut per side, cv2 INTER_CUBIC to 224, BGR fed as if RGB, /255, CLIP
mean/std — what open_clip's EchoCLIP pipeline hands the image tower."""
import sys

import cv2
import numpy as np
import torch
from safetensors.torch import save_file

MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


def crop_and_scale(img, size=224, zoom=0.1):
    h, w = img.shape[:2]
    if w > h:
        p = int(round((w - h) / 2))
        if p > 0:
            img = img[:, p:w - p]
    elif h > w:
        p = int(round((h - w) / 2))
        if p > 0:
            img = img[p:h - p]
    h, w = img.shape[:2]
    px, py = int(w * zoom), int(h * zoom)
    if px > 0:
        img = img[:, px:w - px]
    if py > 0:
        img = img[py:h - py]
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_CUBIC)


def read_bgr_frames(path):
    """Every frame of a video as OpenCV decodes it (BGR, uint8)."""
    cap = cv2.VideoCapture(path)
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            return frames
        frames.append(f)


def main():
    path, out = sys.argv[1:3]
    frames = read_bgr_frames(path)
    raw = np.stack(frames)
    pix = np.stack([(crop_and_scale(f).astype(np.float32) / 255.0 - MEAN) / STD for f in frames])
    save_file({"frames_bgr": torch.from_numpy(raw).contiguous(),
               "pixels": torch.from_numpy(pix).permute(0, 3, 1, 2).contiguous()}, out)


if __name__ == "__main__":
    main()
