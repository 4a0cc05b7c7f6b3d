"""Shared helpers of the parity scripts: build an open_clip model from a snapshot directory the
way a user of the Python reference would (open_clip config + state dict), on CPU, in f32."""
import json
import os


def register_micro_convnext():
    """timm registration of the test-sized trunk used by data-samples/echovault-tiny."""
    import timm
    from timm.models import register_model
    from timm.models.convnext import _create_convnext

    if "convnext_echovault_micro" in timm.list_models():
        return

    @register_model
    def convnext_echovault_micro(pretrained=False, **kwargs):
        return _create_convnext("convnext_echovault_micro", pretrained=pretrained,
                                **dict(dict(depths=(1, 1, 2, 1), dims=(16, 32, 64, 128)), **kwargs))


def load_state_dict(model_dir):
    import torch
    for name in sorted(os.listdir(model_dir)):
        if name.endswith(".safetensors"):
            from safetensors.torch import load_file
            return load_file(os.path.join(model_dir, name))
    return torch.load(os.path.join(model_dir, "open_clip_pytorch_model.bin"), map_location="cpu", weights_only=True)


def load_model(model_dir):
    """open_clip CLIP from `open_clip_config.json` + weights, eval mode, f32."""
    import open_clip
    import torch

    register_micro_convnext()
    with open(os.path.join(model_dir, "open_clip_config.json")) as f:
        cfg = json.load(f)
    model_cfg = cfg.get("model_cfg", cfg)
    tmp = os.path.join(model_dir, ".parity-cfg")
    os.makedirs(tmp, exist_ok=True)
    name = "parity-" + os.path.basename(os.path.abspath(model_dir))
    with open(os.path.join(tmp, name + ".json"), "w") as f:
        json.dump(model_cfg, f)
    open_clip.add_model_config(tmp)
    try:
        model = open_clip.create_model(name, pretrained=None)
    finally:
        os.remove(os.path.join(tmp, name + ".json"))
        os.rmdir(tmp)
    sd = {k: v.float() for k, v in load_state_dict(model_dir).items()}
    model.load_state_dict(sd, strict=True)
    model.eval()
    torch.set_grad_enabled(False)
    return model
