#!/usr/bin/env python3
"""The peer reader for the checkpoint tests: torch.load of a torch.save file, its
state dict (the "state_dict" entry of a training wrapper, else the file's dict) written back as
safetensors, each tensor contiguous and in its own dtype (float8 as its uint8 bytes, which
safetensors readers in tch do not know). Prints a JSON description of how each tensor was stored,
so a test can check that the layouts it means to cover are there.
Usage: checkpoint_tensors.py IN.bin OUT.safetensors"""
import json
import sys
import zipfile

import torch
from safetensors.torch import save_file

FLOAT8 = {torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e4m3fnuz, torch.float8_e5m2fnuz}


def main():
    src, out = sys.argv[1:3]
    # weights_only=False: torch's restricted unpickler refuses pickle protocol 4/5 (FRAME, 0x95),
    # and the files these tests read are their own, just written.
    obj = torch.load(src, map_location="cpu", weights_only=False)
    sd = obj["state_dict"] if "state_dict" in obj else obj
    tensors, desc = {}, {}
    storages = {}
    for k, v in sd.items():
        ptr = v.untyped_storage().data_ptr()
        desc[k] = {
            "dtype": str(v.dtype).removeprefix("torch."),
            "shape": list(v.shape),
            "stride": list(v.stride()),
            "offset": v.storage_offset(),
            "contiguous": v.is_contiguous(),
            "storage": storages.setdefault(ptr, len(storages)),
            "parameter": isinstance(v, torch.nn.Parameter),
        }
        v = v.detach().contiguous().clone()
        tensors[k] = v.view(torch.uint8) if v.dtype in FLOAT8 else v
    save_file(tensors, out)
    names = zipfile.ZipFile(src).namelist()
    print(json.dumps({
        "type": type(sd).__name__,
        "metadata": hasattr(sd, "_metadata"),
        "keys": list(sd),
        "prefix": next(n for n in names if n.endswith("/data.pkl"))[: -len("/data.pkl")],
        "tensors": desc,
    }))


if __name__ == "__main__":
    main()
