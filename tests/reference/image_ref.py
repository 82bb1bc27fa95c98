"""Image reference side: test images made with Pillow, and what transformers' Gemma 3 image
processor (the Pillow backend, pinned: torchvision would change the reference) makes of them when
given their paths. Usage:
  image_ref.py make DIR
      Writes test images of every kind into DIR (PNG RGB/RGBA/L/LA/P/16-bit grey, JPEG 4:2:0,
      4:2:2, 4:4:4, progressive, grey, EXIF orientations 2-8, PNG with eXIf, BMP, GIF, tiny and
      extreme sizes, up- and downscaling); prints {"files": [paths]}.
  image_ref.py resize OUT.safetensors N
      N random RGB noise images (in.i, sizes 2..160) and Image.resize((w, h), BILINEAR) of each to a
      random size (out.i): up, down, and mixed, both pass orders of Pillow 13.
  image_ref.py run OUT.safetensors SIZE FILE...
      For each FILE i: rgb.i (H, W, 3) uint8 = load_image(path) (EXIF transposed, convert("RGB")),
      resized.i = rgb resized to SIZE x SIZE with Image.BILINEAR, and pixels.i (3, SIZE, SIZE)
      float32 = Gemma3ImageProcessorPil(size SIZE, Gemma 3's preprocessor_config) on the path.
      Prints {"images": n}.
"""
import io
import os
import sys

import numpy as np
from PIL import Image
from safetensors.numpy import save_file

from common import emit


def scene(w, h, seed):
    """A photo-like RGB test image: gradients, shapes and noise (chroma detail for JPEG)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 128 + 100 * np.sin(x / max(w, 1) * 6.3 + seed)
    g = 128 + 100 * np.cos(y / max(h, 1) * 4.1)
    b = 255 * (x + y) / max(w + h, 1)
    img = np.stack([r, g, b], -1)
    for _ in range(4):  # sharp-edged coloured rectangles
        x0, y0 = rng.integers(0, max(w - 1, 1)), rng.integers(0, max(h - 1, 1))
        img[y0:y0 + max(h // 4, 1), x0:x0 + max(w // 5, 1)] = rng.integers(0, 256, 3)
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def exif_with_orientation(o):
    exif = Image.Exif()
    exif[0x0112] = o
    return exif.tobytes()


def make(out):
    os.makedirs(out, exist_ok=True)
    files = []

    def put(name, image, **kw):
        path = os.path.join(out, name)
        image.save(path, **kw)
        files.append(path)

    rgb = Image.fromarray(scene(499, 375, 1))
    put("rgb.png", rgb)
    rgba = Image.fromarray(np.dstack([scene(300, 200, 2), np.random.default_rng(3).integers(0, 256, (200, 300), dtype=np.uint8)]), "RGBA")
    put("rgba.png", rgba)
    put("grey.png", Image.fromarray(scene(257, 130, 4)).convert("L"))
    put("grey_alpha.png", Image.fromarray(scene(64, 48, 5)).convert("LA"))
    put("palette.png", Image.fromarray(scene(200, 150, 6)).quantize(64))
    grey16 = (np.random.default_rng(7).integers(0, 1024, (90, 120))).astype(np.uint16)
    put("grey16.png", Image.fromarray(grey16))
    put("q75_420.jpg", rgb, quality=75, subsampling=2)
    put("q90_422.jpg", Image.fromarray(scene(333, 250, 8)), quality=90, subsampling=1)
    put("q95_444.jpg", Image.fromarray(scene(640, 480, 9)), quality=95, subsampling=0)
    put("progressive.jpg", Image.fromarray(scene(501, 377, 10)), quality=85, progressive=True)
    put("grey.jpg", Image.fromarray(scene(300, 220, 11)).convert("L"), quality=80)
    for o in range(2, 9):  # every EXIF orientation, on a non-square image
        put(f"exif_{o}.jpg", Image.fromarray(scene(120, 80, 20 + o)), quality=90, exif=exif_with_orientation(o))
    put("exif_8.png", Image.fromarray(scene(90, 60, 30)), exif=exif_with_orientation(8))
    put("rgb.bmp", Image.fromarray(scene(150, 100, 12)))
    put("palette.gif", Image.fromarray(scene(160, 120, 13)).quantize(128))
    put("big_1203x1001.jpg", Image.fromarray(scene(1203, 1001, 14)), quality=88)
    put("one_pixel.png", Image.fromarray(scene(1, 1, 15)))
    put("wide_2000x30.png", Image.fromarray(scene(2000, 30, 16)))
    put("tall_700x1900.jpg", Image.fromarray(scene(700, 1900, 17)), quality=85)  # resized vertically first
    put("tall_1000x2400.png", Image.fromarray(scene(1000, 2400, 18)))  # both shrink, vertically first
    emit({"files": files})


def run(out, size, files):
    from transformers.image_utils import load_image
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil
    processor = Gemma3ImageProcessorPil(size={"height": size, "width": size}, resample=2,
                                        rescale_factor=0.00392156862745098, image_mean=[0.5] * 3,
                                        image_std=[0.5] * 3, do_pan_and_scan=None, do_convert_rgb=None)
    tensors = {}
    for i, path in enumerate(files):
        image = load_image(path)
        tensors[f"rgb.{i}"] = np.asarray(image, dtype=np.uint8).copy()
        tensors[f"resized.{i}"] = np.asarray(image.resize((size, size), Image.BILINEAR), dtype=np.uint8).copy()
        pixels = processor(images=[path], return_tensors="np")["pixel_values"]
        tensors[f"pixels.{i}"] = np.ascontiguousarray(pixels[0], dtype=np.float32)
    save_file(tensors, out)
    emit({"images": len(files), "processor": type(processor).__name__})


def resize(out, n):
    rng = np.random.default_rng(2024)
    tensors = {}
    for i in range(n):
        w, h, ow, oh = (int(v) for v in rng.integers(2, 161, 4))
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        tensors[f"in.{i}"] = a
        tensors[f"out.{i}"] = np.asarray(Image.fromarray(a).resize((ow, oh), Image.BILINEAR), dtype=np.uint8).copy()
    save_file(tensors, out)
    emit({"cases": n})


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2])
    elif sys.argv[1] == "resize":
        resize(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1] == "run":
        run(sys.argv[2], int(sys.argv[3]), sys.argv[4:])
    else:
        raise SystemExit(f"unknown command {sys.argv[1]}")
