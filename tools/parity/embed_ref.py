#!/usr/bin/env python3
"""open_clip reference embeddings for the parity tests.
Usage: embed_ref.py MODEL_DIR IN.safetensors OUT.safetensors
IN holds `images` [N,3,S,S] f32 (already preprocessed) and `texts` [M,77] int64 token ids;
OUT gets `image_features` and `text_features`, L2-normalised, f32."""
import sys

import torch
from safetensors.torch import load_file, save_file

import common


def main():
    model_dir, inp, out = sys.argv[1:4]
    model = common.load_model(model_dir)
    x = load_file(inp)
    res = {}
    with torch.no_grad():
        if "images" in x:
            res["image_features"] = model.encode_image(x["images"].float(), normalize=True).contiguous()
        if "texts" in x:
            res["text_features"] = model.encode_text(x["texts"].long(), normalize=True).contiguous()
    save_file(res, out)


if __name__ == "__main__":
    main()
