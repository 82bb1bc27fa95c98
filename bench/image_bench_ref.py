"""Reference side of bench/image_bench: transformers' Gemma 3 image processor (the Pillow backend,
Gemma3ImageProcessorPil at 896 x 896, google/gemma-3-*'s settings) on image files given by path.
Usage: image_bench_ref.py OUT_DIR

Writes the benchmark's images into OUT_DIR (photo-like scenes: JPEG 4:2:0 500 x 375 as Flickr8K's,
JPEG 4:4:4 1024 x 768, PNG 640 x 480, tests/reference/image_ref.py's generator) and OUT_DIR/files.txt,
then stays resident answering one command per stdin line with one JSON line:
  (start) -> {"ready": true, "images": n, "torch_threads": t}
  run     -> {"s": seconds of processor(images=[paths]) over all files, one call per file}
The processor is pure Python + Pillow + numpy on one thread (Pillow's resize and numpy's element-
wise ops do not start threads here), which is what the benchmark compares ours on one thread with.
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference"))
from PIL import Image  # noqa: E402

from image_ref import scene  # noqa: E402


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    files = []
    for i in range(12):
        p = os.path.join(out, f"flickr_{i}.jpg")
        Image.fromarray(scene(500, 375, 100 + i)).save(p, quality=88, subsampling=2)
        files.append(p)
    for i in range(2):
        p = os.path.join(out, f"large_{i}.jpg")
        Image.fromarray(scene(1024, 768, 200 + i)).save(p, quality=92, subsampling=0)
        files.append(p)
    for i in range(2):
        p = os.path.join(out, f"shot_{i}.png")
        Image.fromarray(scene(640, 480, 300 + i)).save(p)
        files.append(p)
    with open(os.path.join(out, "files.txt"), "w") as f:
        f.write("\n".join(files) + "\n")
    import torch
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil
    processor = Gemma3ImageProcessorPil(size={"height": 896, "width": 896}, resample=2,
                                        rescale_factor=0.00392156862745098, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    print(json.dumps({"ready": True, "images": len(files), "torch_threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            print(json.dumps({"error": "unknown command"}), flush=True)
            continue
        start = time.perf_counter()
        for p in files:
            processor(images=[p], return_tensors="np")
        print(json.dumps({"s": time.perf_counter() - start}), flush=True)


if __name__ == "__main__":
    main()
