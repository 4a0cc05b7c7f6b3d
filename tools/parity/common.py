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


def perturb_(model, seed):
    """Random init leaves layer-scale gammas at 1e-6 and some biases at zero: nudge every
    parameter in place (so `model.state_dict()` stays the model's own) until each one matters to
    the output and a mis-wired weight shows."""
    import torch

    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    floats = {k for k, v in model.state_dict().items() if v.is_floating_point()}
    assert floats == set(params), f"float state-dict entries that are not parameters: {floats - set(params)}"
    with torch.no_grad():
        for name, p in params.items():
            if name == "logit_scale":
                continue
            if name.endswith(".gamma"):
                p.copy_(0.1 + 0.05 * torch.randn(p.shape, generator=g))
            else:
                p.add_(0.02 * torch.randn(p.shape, generator=g))


def store_as_others_do_(model):
    """Lay some text-tower parameters out the way checkpoints in the wild have them: the token
    embedding in bf16 and the positional embedding in f16 (values rounded to that precision),
    `text_projection` transposed in memory (non-contiguous, same values). These survive
    `torch.save(model.state_dict())`; a reader must follow dtype, strides and offsets."""
    import torch

    with torch.no_grad():
        model.token_embedding.to(torch.bfloat16)
        model.positional_embedding.data = model.positional_embedding.data.half()
        model.text_projection.data = model.text_projection.data.t().contiguous().t()


def load_state_dict(model_dir):
    """The snapshot's weights as open_clip reads a checkpoint (`open_clip.factory.load_state_dict`:
    safetensors, or torch.load with weights_only, a training wrapper unwrapped, `module.` dropped)."""
    from open_clip.factory import load_state_dict as open_clip_load
    names = sorted(os.listdir(model_dir))
    name = next((n for n in names if n.endswith(".safetensors")), "open_clip_pytorch_model.bin")
    return open_clip_load(os.path.join(model_dir, name), device="cpu", weights_only=True)


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
