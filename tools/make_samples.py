#!/usr/bin/env python3
"""Generate data-samples/: synthetic echo-like clips with reports, the CLIP BPE tokenizer.json,
and a tiny random-init EchoCLIP-shaped model. Deterministic (fixed seeds); run by hand with the
project venv:  .venv/bin/python tools/make_samples.py  (then update data-samples/README.md).

Nothing here derives from the EchoCLIP reference repository: the clips are drawn from scratch,
the reports are our own sentences, the tokenizer comes from the BPE vocabulary bundled with
open_clip_torch (MIT, OpenAI CLIP), and the weights are open_clip's random initialisation.
"""
import gzip
import hashlib
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "data-samples")
MODEL_DIR = os.path.join(OUT, "echovault-tiny")
CLIPS_DIR = os.path.join(OUT, "clips")

# Test-sized ConvNeXt trunk, registered in timm under this name; echovault's config table
# (src/model/config.rs) knows the same depths and dims.
MICRO_NAME = "convnext_echovault_micro"
MICRO_ARGS = dict(depths=(1, 1, 2, 1), dims=(16, 32, 64, 128))

TINY_CONFIG = {
    "model_cfg": {
        "embed_dim": 64,
        "vision_cfg": {
            "timm_model_name": MICRO_NAME,
            "timm_model_pretrained": False,
            "timm_pool": "",
            "timm_proj": "linear",
            "timm_drop": 0.0,
            "timm_drop_path": 0.0,
            "image_size": 224,
        },
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2},
    },
    "preprocess_cfg": {
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
    },
}

# (name, container, codec, ejection fraction %, pacemaker lead, report)
CLIPS = [
    ("a4c_normal_01", "avi", "mjpeg", 62, False,
     "Normal left ventricular size and systolic function. Ejection fraction 62 %. No pericardial effusion."),
    ("a4c_reduced_02", "avi", "mpeg4", 28, False,
     "Severely reduced left ventricular systolic function. Ejection fraction 28 %. Dilated left ventricle."),
    ("a4c_pacer_03", "avi", "mpeg4", 45, True,
     "Mildly reduced left ventricular function, ejection fraction 45 %. Pacemaker lead seen in the right heart."),
    ("a4c_normal_04", "mp4", "libx264", 58, False,
     "Left ventricular ejection fraction is normal at 58 %. Normal right ventricular size."),
    ("a4c_reduced_05", "mp4", "libx264", 35, True,
     "Moderately reduced left ventricular systolic function, ejection fraction 35 %. Device lead in the right ventricle."),
    ("a4c_hyperdynamic_06", "mp4", "libx264", 75, False,
     "Hyperdynamic left ventricle with ejection fraction 75 %. Small left ventricular cavity."),
]

W, H, FRAMES, FPS = 112, 96, 24, 25


def register_micro_convnext():
    from timm.models import register_model
    from timm.models.convnext import _create_convnext

    @register_model
    def convnext_echovault_micro(pretrained=False, **kwargs):  # noqa: F811
        return _create_convnext(MICRO_NAME, pretrained=pretrained, **dict(MICRO_ARGS, **kwargs))


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def make_tokenizer(path):
    """CLIP BPE as tokenizer.json (HF tokenizers), from open_clip's bundled vocabulary."""
    import open_clip
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    bpe_path = os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")
    merges = gzip.open(bpe_path).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<start_of_text>", "<end_of_text>"]
    tok = Tokenizer(models.BPE(vocab={v: i for i, v in enumerate(vocab)}, merges=merges,
                               end_of_word_suffix="</w>", continuing_subword_prefix="", fuse_unk=False))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    pattern = r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.BPEDecoder(suffix="</w>")])
    tok.add_special_tokens(["<start_of_text>", "<end_of_text>"])
    assert tok.token_to_id("<start_of_text>") == 49406 and tok.token_to_id("<end_of_text>") == 49407
    tok.save(path, pretty=False)
    # Check against open_clip's own tokenizer on the report sentences.
    ref = open_clip.tokenizer.SimpleTokenizer()
    for *_, text in CLIPS:
        ours = tok.encode(text, add_special_tokens=False).ids
        assert ours == ref.encode(text), (text, ours, ref.encode(text))


def make_model(out_dir):
    import torch
    import open_clip
    from safetensors.torch import save_file

    register_micro_convnext()
    cfg_dir = os.path.join(out_dir, ".cfg")
    os.makedirs(cfg_dir, exist_ok=True)
    with open(os.path.join(cfg_dir, "echovault-tiny.json"), "w") as f:
        json.dump(TINY_CONFIG["model_cfg"], f)
    open_clip.add_model_config(cfg_dir)
    torch.manual_seed(20261128)
    model = open_clip.create_model("echovault-tiny", pretrained=None)
    os.remove(os.path.join(cfg_dir, "echovault-tiny.json"))
    os.rmdir(cfg_dir)
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    # f16 keeps the sample small (the token embedding dominates); loaders upcast to f32.
    save_file({k: v.half() for k, v in sd.items()}, os.path.join(out_dir, "open_clip_model.safetensors"))
    with open(os.path.join(out_dir, "open_clip_config.json"), "w") as f:
        json.dump(TINY_CONFIG, f, indent=2)
        f.write("\n")


def draw_clip(seed, ef, pacer):
    """Apical-four-chamber-like cine: a speckled sector, a ventricle cavity beating with the
    given ejection fraction, an optional bright pacemaker lead, an ECG trace below the sector."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    apex = (W / 2, 4.0)
    r = np.hypot(xx - apex[0], yy - apex[1])
    ang = np.arctan2(xx - apex[0], yy - apex[1])
    sector = (r < H * 0.92) & (np.abs(ang) < np.deg2rad(38))
    speckle = rng.rayleigh(0.35, size=(H, W)).astype(np.float32)
    frames = []
    edv_axis = 0.30 * H
    esv_scale = (1 - ef / 100.0) ** (1 / 3)  # volume ∝ axis³
    for t in range(FRAMES):
        phase = 0.5 - 0.5 * np.cos(2 * np.pi * t / FRAMES)  # 0 = diastole, 1 = systole
        scale = 1 - (1 - esv_scale) * phase
        a, b = edv_axis * scale, 0.55 * edv_axis * scale
        cx, cy = W * 0.42, H * 0.45
        cavity = ((xx - cx) / b) ** 2 + ((yy - cy) / a) ** 2 < 1
        wall = (((xx - cx) / (b + 5)) ** 2 + ((yy - cy) / (a + 5)) ** 2 < 1) & ~cavity
        img = 0.45 * speckle * (1 + 0.15 * rng.standard_normal((H, W)).astype(np.float32))
        img = np.where(wall, img * 2.2, img)
        img = np.where(cavity, img * 0.12, img)
        if pacer:
            lead = np.abs((xx - W * 0.66) - 0.35 * (yy - H * 0.2)) < 1.2
            img = np.where(lead & (yy > H * 0.2) & (yy < H * 0.7), 1.0, img)
        img = np.where(sector, np.clip(img, 0, 1), 0.0)
        rgb = np.repeat((img * 255).astype(np.uint8)[..., None], 3, axis=2)
        # ECG trace (green) along the bottom rows, outside the sector.
        xs = np.arange(W)
        ecg = (H - 8 - 5 * np.exp(-((xs - (t / FRAMES) * W) % W - 10) ** 2 / 6)).astype(int)
        rgb[np.clip(ecg, 0, H - 1), xs] = (40, 220, 60)
        frames.append(rgb)
    return np.stack(frames)


def encode(frames, path, codec):
    args = ["ffmpeg", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{W}x{H}",
            "-r", str(FPS), "-i", "-", "-c:v", codec]
    if codec == "mjpeg":
        args += ["-q:v", "6", "-pix_fmt", "yuvj420p"]
    elif codec == "mpeg4":
        args += ["-q:v", "6", "-pix_fmt", "yuv420p"]
    else:
        args += ["-pix_fmt", "yuv420p", "-crf", "28", "-preset", "medium", "-bf", "0",
                 "-x264-params", "threads=1", "-map_metadata", "-1", "-fflags", "+bitexact"]
    args += ["-flags", "+bitexact", path]
    subprocess.run(args, input=frames.tobytes(), check=True)


def main():
    os.makedirs(MODEL_DIR, exist_ok=True)
    os.makedirs(CLIPS_DIR, exist_ok=True)
    make_tokenizer(os.path.join(MODEL_DIR, "tokenizer.json"))
    make_model(MODEL_DIR)
    for i, (name, ext, codec, ef, pacer, report) in enumerate(CLIPS):
        encode(draw_clip(1000 + i, ef, pacer), os.path.join(CLIPS_DIR, f"{name}.{ext}"), codec)
        with open(os.path.join(CLIPS_DIR, f"{name}.txt"), "w") as f:
            f.write(report + "\n")
    for dirpath, _, files in sorted(os.walk(OUT)):
        for fn in sorted(files):
            p = os.path.join(dirpath, fn)
            if fn == "README.md":
                continue
            h = hashlib.sha256(open(p, "rb").read()).hexdigest()
            print(f"{os.path.relpath(p, OUT)}\t{os.path.getsize(p)}\t{h}")


if __name__ == "__main__":
    sys.exit(main())
