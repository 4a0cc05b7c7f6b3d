"""pydicom (+ pylibjpeg) decoded frames per second on one file: every frame converted to RGB,
frame by frame (pydicom.pixels.iter_pixels), median over N passes. Prints JSON."""
import json
import statistics
import sys
import time

from pydicom.pixels import iter_pixels

path, passes = sys.argv[1], int(sys.argv[2])
rates = []
for _ in range(passes):
    t0 = time.perf_counter()
    n = 0
    for frame in iter_pixels(path, as_rgb=True):
        n += 1
    rates.append(n / (time.perf_counter() - t0))
print(json.dumps({"frames": n, "decode_frames_per_s": statistics.median(rates), "passes": passes}))
