#!/usr/bin/env python3
"""Write an HF-style open_clip snapshot with random weights: open_clip_config.json,
open_clip_pytorch_model.bin (torch.save of the f32 state dict, as HF checkpoints are saved) and
tokenizer.json (copied from data-samples). Usage: make_checkpoint.py {convnext_base|tiny} SEED OUT_DIR"""
import json
import os
import shutil
import sys

import torch

import common

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
SAMPLE = os.path.join(ROOT, "data-samples", "echovault-tiny")


def main():
    which, seed, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    import open_clip
    common.register_micro_convnext()
    if which == "convnext_base":
        model_cfg = open_clip.get_model_config("convnext_base")
    else:
        with open(os.path.join(SAMPLE, "open_clip_config.json")) as f:
            model_cfg = json.load(f)["model_cfg"]
    os.makedirs(out, exist_ok=True)
    tmp = os.path.join(out, ".cfg")
    os.makedirs(tmp, exist_ok=True)
    with open(os.path.join(tmp, f"mk-{which}.json"), "w") as f:
        json.dump(model_cfg, f)
    open_clip.add_model_config(tmp)
    torch.manual_seed(seed)
    model = open_clip.create_model(f"mk-{which}", pretrained=None)
    shutil.rmtree(tmp)
    # Random init leaves layer-scale gammas at 1e-6 and some biases at zero; perturb every
    # weight a little so that each one matters to the output and a mis-wired weight shows.
    g = torch.Generator().manual_seed(seed + 1)
    sd = {}
    for k, v in model.state_dict().items():
        v = v.detach().float().clone()
        if v.is_floating_point() and k != "logit_scale":
            v += 0.02 * torch.randn(v.shape, generator=g)
            if k.endswith(".gamma"):
                v = 0.1 + 0.05 * torch.randn(v.shape, generator=g)
        sd[k] = v.contiguous()
    cfg = {"model_cfg": model_cfg, "preprocess_cfg": {"mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD)}}
    with open(os.path.join(out, "open_clip_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    shutil.copy(os.path.join(SAMPLE, "tokenizer.json"), os.path.join(out, "tokenizer.json"))
    # Weights last, through a rename: callers treat the .bin's presence as "complete".
    torch.save(sd, os.path.join(out, "open_clip_pytorch_model.bin.tmp"))
    os.replace(os.path.join(out, "open_clip_pytorch_model.bin.tmp"), os.path.join(out, "open_clip_pytorch_model.bin"))


if __name__ == "__main__":
    main()
