#!/usr/bin/env python3
"""Write an HF-style open_clip snapshot with random weights as an open_clip hub repo holds it:
open_clip_config.json and open_clip_pytorch_model.bin, no tokenizer.json (echovault's built-in
CLIP BPE tokenises).

The .bin is `torch.save(model.state_dict())` straight from the open_clip model, as open_clip's
hub uploads and training scripts write it: an OrderedDict with `_metadata`, each tensor as the
model holds it. Weights are perturbed in place on the model's parameters (common.perturb_).

Usage: make_checkpoint.py {convnext_base|tiny} SEED OUT_DIR [--layouts] [--module-prefix]
                          [--protocol N]
  --layouts        tensors stored as checkpoints in the wild have them: bf16 / f16 parameters, a
                   transposed (non-contiguous) weight, parameters that are views at offsets into
                   one shared storage, a stride-0 (expanded) parameter (values as saved)
  --module-prefix  save the state dict of torch.nn.DataParallel(model): every key `module.`
  --protocol N     pickle protocol of torch.save (default: torch's, 2)"""
import argparse
import json
import os
import shutil

import torch

import common

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
SAMPLE = os.path.join(ROOT, "data-samples", "echovault-tiny")


def shared_storage_views_(model):
    """Re-seat some parameters of the first text block as views into shared storages, values
    unchanged: ln_1 weight/bias and the attention input bias end to end in one f32 buffer (non-zero
    offsets); the MLP input bias followed by the attention output weight stored transposed
    (a non-contiguous view at an offset); ln_final's bias one value expanded (stride 0)."""
    blk = model.transformer.resblocks[0]
    with torch.no_grad():
        parts = [blk.ln_1.weight, blk.ln_1.bias, blk.attn.in_proj_bias]
        buf = torch.cat([p.detach().flatten() for p in parts])
        at = 0
        for p in parts:
            p.data = buf[at:at + p.numel()].view(p.shape)
            at += p.numel()
        bias, w = blk.mlp.c_fc.bias, blk.attn.out_proj.weight
        buf2 = torch.empty(bias.numel() + w.numel())
        buf2[:bias.numel()] = bias.detach()
        buf2[bias.numel():] = w.detach().t().flatten()
        bias.data = buf2[:bias.numel()]
        w.data = buf2[bias.numel():].view(w.shape[1], w.shape[0]).t()
        lnf = model.ln_final.bias
        lnf.data = lnf.detach()[:1].clone().expand(lnf.shape)
        assert not w.is_contiguous() and w.storage_offset() > 0 and lnf.stride() == (0,)
        model.visual.head.proj.half()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("which", choices=["convnext_base", "tiny"])
    ap.add_argument("seed", type=int)
    ap.add_argument("out")
    ap.add_argument("--layouts", action="store_true")
    ap.add_argument("--module-prefix", action="store_true")
    ap.add_argument("--protocol", type=int, default=None)
    a = ap.parse_args()
    import open_clip
    common.register_micro_convnext()
    if a.which == "convnext_base":
        model_cfg = open_clip.get_model_config("convnext_base")
    else:
        with open(os.path.join(SAMPLE, "open_clip_config.json")) as f:
            model_cfg = json.load(f)["model_cfg"]
    os.makedirs(a.out, exist_ok=True)
    tmp = os.path.join(a.out, ".cfg")
    os.makedirs(tmp, exist_ok=True)
    with open(os.path.join(tmp, f"mk-{a.which}.json"), "w") as f:
        json.dump(model_cfg, f)
    open_clip.add_model_config(tmp)
    torch.manual_seed(a.seed)
    model = open_clip.create_model(f"mk-{a.which}", pretrained=None)
    shutil.rmtree(tmp)
    common.perturb_(model, a.seed + 1)
    if a.layouts:
        common.store_as_others_do_(model)
        shared_storage_views_(model)
    saved = torch.nn.DataParallel(model) if a.module_prefix else model
    sd = saved.state_dict()
    assert type(sd).__name__ == "OrderedDict" and hasattr(sd, "_metadata")
    cfg = {"model_cfg": model_cfg, "preprocess_cfg": {"mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD)}}
    with open(os.path.join(a.out, "open_clip_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    # Weights last, through a rename: callers treat the .bin's presence as "complete". (The zip's
    # record prefix then is "open_clip_pytorch_model.bin", not "archive": torch names it after
    # the file it writes.)
    kw = {} if a.protocol is None else {"pickle_protocol": a.protocol}
    torch.save(sd, os.path.join(a.out, "open_clip_pytorch_model.bin.tmp"), **kw)
    os.replace(os.path.join(a.out, "open_clip_pytorch_model.bin.tmp"), os.path.join(a.out, "open_clip_pytorch_model.bin"))


if __name__ == "__main__":
    main()
