#!/usr/bin/env python3
"""PyTorch open_clip eager image-embedding timings, the peer of benches/embed.rs.
Usage: bench_embed_ref.py MODEL_DIR  → JSON {batch: median seconds per forward}"""
import json
import statistics
import sys
import time

import torch

import common


def main():
    model = common.load_model(sys.argv[1])
    torch.manual_seed(0)
    out = {"threads": torch.get_num_threads()}
    with torch.no_grad():
        for batch in (1, 8, 32):
            x = torch.randn(batch, 3, 224, 224)
            for _ in range(2):
                model.encode_image(x, normalize=True)
            times = []
            for _ in range(10):
                t = time.perf_counter()
                model.encode_image(x, normalize=True)
                times.append(time.perf_counter() - t)
            out[str(batch)] = statistics.median(times)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
