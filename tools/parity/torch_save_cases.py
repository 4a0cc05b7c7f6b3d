#!/usr/bin/env python3
"""A torch.save checkpoint of the layouts a state-dict reader meets beyond one model's weights,
saved by this torch: a training-script wrapper {"epoch", "name", "state_dict", "optimizer"} whose
state dict holds every dtype torch gives a typed storage to plus float8 (an untyped storage,
`_rebuild_tensor_v3`), a `torch.nn.Parameter` (`_rebuild_parameter`), a 0-d and an empty tensor,
views sharing one storage at offsets, transposed, sliced with a step and expanded (stride 0), and
one tensor held under two keys. Usage: torch_save_cases.py OUT.bin [PROTOCOL]"""
import collections
import sys

import torch


def main():
    out = sys.argv[1]
    protocol = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    g = torch.Generator().manual_seed(11)
    base = torch.randn(6, 10, generator=g)
    sd = collections.OrderedDict()
    sd["f32"] = torch.randn(3, 4, generator=g)
    sd["f64"] = torch.randn(5, generator=g, dtype=torch.float64)
    sd["f16"] = torch.randn(2, 3, generator=g).half()
    sd["bf16"] = torch.randn(4, 2, generator=g).bfloat16()
    sd["i64"] = torch.randint(-2**40, 2**40, (7,), generator=g)
    sd["i32"] = torch.randint(-2**30, 2**30, (2, 2), generator=g, dtype=torch.int32)
    sd["i16"] = torch.randint(-2**14, 2**14, (3,), generator=g, dtype=torch.int16)
    sd["i8"] = torch.randint(-128, 128, (3,), generator=g, dtype=torch.int8)
    sd["u8"] = torch.randint(0, 256, (4,), generator=g, dtype=torch.uint8)
    sd["bool"] = torch.rand(5, generator=g) > 0.5
    sd["f8e4m3"] = torch.randn(2, 5, generator=g).to(torch.float8_e4m3fn)
    sd["f8e5m2"] = torch.randn(3, generator=g).to(torch.float8_e5m2)
    sd["scalar"] = torch.tensor(2.5)
    sd["empty"] = torch.empty(0, 3)
    sd["param"] = torch.nn.Parameter(torch.randn(2, 2, generator=g))
    sd["view.rows"] = base[2:4]  # offset 20, contiguous
    sd["view.t"] = base[1:5, 3:9].t()  # offset 13, strides (1, 10)
    sd["view.step"] = base[:, ::3]  # strides (10, 3)
    sd["view.whole"] = base
    sd["view.expand"] = base[5, :1].expand(4, 3)  # strides (0, 0)
    sd["same.a"] = sd["f32"]
    sd["same.b"] = sd["f32"]
    half = torch.randn(8, 6, generator=g).half()
    sd["half.view.t"] = half[2:, 1:].t()
    sd["half.view.col"] = half[:, 5]
    optimizer = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(3)}},
                 "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.98), "eps": 1e-6, "weight_decay": 0.2,
                                   "amsgrad": False, "foreach": None, "params": [0]}]}
    ckpt = {"epoch": 3, "name": "cases", "state_dict": sd, "optimizer": optimizer}
    torch.save(ckpt, out, pickle_protocol=protocol)


if __name__ == "__main__":
    main()
