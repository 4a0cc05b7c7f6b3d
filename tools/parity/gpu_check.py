#!/usr/bin/env python3
"""The checks of tools/gpu-check: echovault (the carried binary) against open_clip on the same
device, bf16 against f32, and throughput. Writes gpu-check.json and gpu-check.md under --out."""
import argparse
import json
import os
import statistics
import struct
import subprocess
import time
import zlib

import numpy as np
import torch
import torch.nn.functional as F

import common

MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
TEXTS = ["normal left ventricular size and function", "severe mitral regurgitation",
         "ejection fraction 25 %", "pacemaker lead in the right ventricle",
         "moderate aortic stenosis, mean gradient 32 mmHg", "small pericardial effusion",
         "status post heart transplant", "impella device across the aortic valve"]


def write_png(path, rgb):
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    open(path, "wb").write(png)


def crop_box(w, h):
    """echovault's crop (src/media/preprocess.rs): square crop, then 10 % per side."""
    x0, y0, cw, ch = 0, 0, w, h
    if w > h:
        p = round((w - h) / 2)
        if 0 < p and 2 * p < w:
            x0, cw = x0 + p, cw - 2 * p
    elif h > w:
        p = round((h - w) / 2)
        if 0 < p and 2 * p < h:
            y0, ch = y0 + p, ch - 2 * p
    px, py = int(cw * 0.1), int(ch * 0.1)
    if 0 < px and 2 * px < cw:
        x0, cw = x0 + px, cw - 2 * px
    if 0 < py and 2 * py < ch:
        y0, ch = y0 + py, ch - 2 * py
    return x0, y0, cw, ch


def preprocess(rgb):
    h, w, _ = rgb.shape
    x0, y0, cw, ch = crop_box(w, h)
    x = torch.from_numpy(rgb[y0:y0 + ch, x0:x0 + cw, ::-1].copy()).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=(224, 224), mode="bicubic", align_corners=False).round().clamp(0, 255)
    return (x / 255.0 - MEAN) / STD


def ev(args, *cmd):
    res = subprocess.run([args.ev, "--model", args.model, "--device", args.device, "--json", *cmd],
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"echovault {' '.join(cmd)} failed: {res.stderr}")
    return json.loads(res.stdout)


def cos_stats(a, b):
    a, b = F.normalize(a.double(), dim=-1), F.normalize(b.double(), dim=-1)
    return float((a * b).sum(-1).min()), float((a - b).abs().max())


def centred_cos(a, b):
    a, b = a.double(), b.double()
    a, b = a - a.mean(0, keepdim=True), b - b.mean(0, keepdim=True)
    return float(F.cosine_similarity(a, b, dim=-1).min())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ev", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    dev = torch.device(args.device)
    res = {"device": args.device, "torch": torch.__version__}
    if args.device == "cuda":
        res["gpu"] = torch.cuda.get_device_name(0)

    rng = np.random.default_rng(0)
    imgs = []
    for i in range(16):
        rgb = (rng.random((96 + 8 * i, 128, 3)) * 255).astype(np.uint8)
        p = os.path.join(args.out, f"img{i:02d}.png")
        write_png(p, rgb)
        imgs.append((p, rgb))

    model = common.load_model(args.model).to(dev)
    ours32 = torch.tensor(ev(args, "embed", "--precision", "f32", "--image", *[p for p, _ in imgs])["embeddings"])
    with torch.no_grad():
        x = torch.cat([preprocess(rgb) for _, rgb in imgs]).to(dev)
        ref_img = model.encode_image(x, normalize=True).float().cpu()
        ids = torch.tensor([ev(args, "tokenize", "--text", t)["ids"] for t in TEXTS]).to(dev)
        ref_txt = model.encode_text(ids, normalize=True).float().cpu()
    ours_txt = torch.tensor([ev(args, "embed", "--text", t)["embedding"] for t in TEXTS])
    res["image_vs_open_clip"] = dict(zip(("min_cos", "max_abs"), cos_stats(ours32, ref_img)))
    res["text_vs_open_clip"] = dict(zip(("min_cos", "max_abs"), cos_stats(ours_txt, ref_txt)))
    ok = res["image_vs_open_clip"]["min_cos"] >= 0.9999 and res["text_vs_open_clip"]["min_cos"] >= 0.9999

    batches = (64, 256) if args.device == "cuda" else (8,)
    precision = "bf16" if args.device == "cuda" else "f32"
    if args.device == "cuda":
        ours16 = torch.tensor(ev(args, "embed", "--precision", "bf16", "--image", *[p for p, _ in imgs])["embeddings"])
        res["bf16_vs_f32_centred_cos_min"] = centred_cos(ours16, ours32)
        ok = ok and res["bf16_vs_f32_centred_cos_min"] >= 0.999
    res["throughput"] = []
    for b in batches:
        ours = ev(args, "bench-embed", "--precision", precision, "--batch", str(b), "--iters", "10")
        x = torch.randn(b, 3, 224, 224, device=dev)
        times = []
        with torch.no_grad(), torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.device == "cuda"):
            for i in range(12):
                if args.device == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                model.encode_image(x)
                if args.device == "cuda":
                    torch.cuda.synchronize()
                if i >= 2:
                    times.append(time.perf_counter() - t)
        peer = b / statistics.median(times)
        res["throughput"].append({"batch": b, "precision": precision, "echovault_frames_per_s": ours["frames_per_s"],
                                  "open_clip_frames_per_s": peer, "ratio": ours["frames_per_s"] / peer})
    res["ok"] = ok
    json.dump(res, open(os.path.join(args.out, "gpu-check.json"), "w"), indent=2)
    md = [f"# gpu-check on {res.get('gpu', args.device)} (torch {res['torch']})", "",
          f"- image vs open_clip: min cos {res['image_vs_open_clip']['min_cos']:.6f}, max |Δ| {res['image_vs_open_clip']['max_abs']:.2e}",
          f"- text vs open_clip: min cos {res['text_vs_open_clip']['min_cos']:.6f}, max |Δ| {res['text_vs_open_clip']['max_abs']:.2e}"]
    if "bf16_vs_f32_centred_cos_min" in res:
        md.append(f"- bf16 vs f32 centred cosine (min over 16 images): {res['bf16_vs_f32_centred_cos_min']:.5f}")
    md += ["", "| batch | precision | echovault frames/s | open_clip frames/s | ratio |", "|---:|---|---:|---:|---:|"]
    md += [f"| {t['batch']} | {t['precision']} | {t['echovault_frames_per_s']:.1f} | {t['open_clip_frames_per_s']:.1f} | {t['ratio']:.2f}× |" for t in res["throughput"]]
    open(os.path.join(args.out, "gpu-check.md"), "w").write("\n".join(md) + "\n")
    print("\n".join(md))
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
