"""Per-face cost of the expression embedder (align + ONNX, 1 thread) against FaceLandmarker detection.

FACIAL_SEARCH_MODELS=../shared/models python -m training.bench_speed
"""

from __future__ import annotations

import time

import numpy as np

from facial_search.embedders.expression import ExpressionEmbedder
from facial_search.faces import FaceFinder, FaceFinderOptions, whole_image_face
from facial_search.imageio import load_image

from . import prepare


def main() -> None:
    root = prepare.data_dir() / "FER2013Test"
    crops = [load_image(p) for p in sorted(root.glob("*.png"))[:300]]
    memes_dir = prepare.data_dir().parent / "faces"
    memes = [load_image(p) for p in sorted(memes_dir.glob("*.jpg"))]
    emb = ExpressionEmbedder()
    with FaceFinder.create_from_options(FaceFinderOptions(max_faces=1)) as finder:
        for name, imgs in (("48x48 FER+ crop", crops), ("photo", memes)):
            t0 = time.perf_counter()
            faces = [finder.detect(im) or [whole_image_face(im)] for im in imgs]
            t_det = (time.perf_counter() - t0) / len(imgs)
            for im, f in zip(imgs[:20], faces[:20], strict=False):
                emb.embed(im, f)  # warm-up
            reps = max(1, 600 // len(imgs))
            t0 = time.perf_counter()
            for _ in range(reps):
                for im, f in zip(imgs, faces, strict=False):
                    emb.embed(im, f)
            t_emb = (time.perf_counter() - t0) / (reps * len(imgs))
            print(f"{name}: FaceLandmarker {t_det * 1e3:.2f} ms/face, embedding {t_emb * 1e3:.2f} ms/face "
                  f"({100 * t_emb / t_det:.0f} %)")  # fmt: skip
    x = np.zeros((1, 48, 48), np.float32)
    t0 = time.perf_counter()
    for _ in range(500):
        emb.run(x)
    print(f"network alone (face + mirror): {(time.perf_counter() - t0) / 500 * 1e3:.2f} ms/face")


if __name__ == "__main__":
    main()
