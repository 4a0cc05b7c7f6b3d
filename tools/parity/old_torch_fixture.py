#!/usr/bin/env python3
"""Run by make_old_torch_fixture.sh under another torch release (not the pinned one): a very
small open_clip model (the echovault-tiny trunk, a 16-wide text tower), its `model.state_dict()`
saved by that torch as open_clip_pytorch_model.bin, and expected.json with what open_clip computes
under that torch for fixed inputs (no tokenizer involved: token ids are given), plus each saved
tensor's dtype and shape. Usage: old_torch_fixture.py OUT_DIR"""
import json
import os
import shutil
import sys

import torch

import common

# The image batch is a formula of integer indices (exact in f32, so the Rust test builds the same
# tensor): value = ((7n + 13c + 3h + 5w) mod 17 − 8) / 4.
IMAGES = (2, 3, 224, 224)
# Three rows of 77 CLIP token ids: start 49406, ids, end 49407, zero padding; the last row is full.
TEXTS = [
    [49406, 320, 1125, 539, 49407] + [0] * 72,
    [49406, 7, 8, 9, 10, 11, 12, 49407] + [0] * 69,
    [49406] + [1000 + 37 * i for i in range(75)] + [49407],
]


def images():
    n, c, h, w = (torch.arange(s).view([-1 if i == d else 1 for i in range(4)]) for d, s in enumerate(IMAGES))
    return (((7 * n + 13 * c + 3 * h + 5 * w) % 17 - 8).float() / 4).contiguous()


def create(cfg_dir, name, model_cfg):
    import open_clip
    with open(os.path.join(cfg_dir, name + ".json"), "w") as f:
        json.dump(model_cfg, f)
    open_clip.add_model_config(cfg_dir)
    return open_clip.create_model(name, pretrained=None)


def main():
    out = sys.argv[1]
    import open_clip
    import timm
    common.register_micro_convnext()
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "..", "..", "data-samples", "echovault-tiny", "open_clip_config.json")) as f:
        cfg = json.load(f)
    model_cfg = cfg["model_cfg"]
    model_cfg["embed_dim"] = 32
    model_cfg["text_cfg"].update({"width": 16, "heads": 4, "layers": 2})
    cfg_dir = os.path.join(out, ".cfg")
    os.makedirs(cfg_dir, exist_ok=True)
    try:
        torch.manual_seed(5)
        model = create(cfg_dir, "old-torch-micro", model_cfg)
        common.perturb_(model, 6)
        # bf16 token embedding (most of the file), f16 positional embedding, a transposed
        # text_projection: the state dict still is the model's own.
        common.store_as_others_do_(model)
        sd = model.state_dict()
        assert type(sd).__name__ == "OrderedDict" and hasattr(sd, "_metadata")
        path = os.path.join(out, "open_clip_pytorch_model.bin")
        torch.save(sd, path)

        # The expectation: the saved file loaded back the way a user of open_clip would (the
        # tensors in f32, into a fresh f32 model), under this same torch.
        ref = create(cfg_dir, "old-torch-micro-ref", model_cfg)
        loaded = torch.load(path, map_location="cpu", weights_only=True)
        ref.load_state_dict({k: v.float() for k, v in loaded.items()}, strict=True)
        ref.eval()
        with torch.no_grad():
            img = ref.encode_image(images(), normalize=True)
            txt = ref.encode_text(torch.tensor(TEXTS), normalize=True)
    finally:
        shutil.rmtree(cfg_dir, ignore_errors=True)
    with open(os.path.join(out, "open_clip_config.json"), "w") as f:
        json.dump({"model_cfg": model_cfg, "preprocess_cfg": cfg["preprocess_cfg"]}, f, indent=2)
    expected = {
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "timm": timm.__version__,
        "images": {"shape": list(IMAGES), "value": "((7n + 13c + 3h + 5w) mod 17 - 8) / 4"},
        "texts": TEXTS,
        "image_features": img.tolist(),
        "text_features": txt.tolist(),
        "tensors": {
            k: {"dtype": str(v.dtype).removeprefix("torch."), "shape": list(v.shape), "contiguous": v.is_contiguous()}
            for k, v in sd.items()
        },
    }
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
