"""What the expression embedding adds to the FaceLandmarker call, per face.

Issue target: the embedding (alignment + network) costs at most 20 % of the FaceLandmarker call it follows.
For each image of three sets (the face photos of ../shared/data/faces, meme templates with a face, FER+ test
crops), the FaceLandmarker call and the embedding of all its faces are timed back to back, several rounds,
and the ratio of the summed medians is printed per set: ``embedding / landmarks`` (same process, same
images, so the machine's drift cancels).

    python benchmarks/bench_embedding.py [--rounds 5] [--model other.onnx ...]

``--model`` adds the ratio of other ONNX graphs (e.g. the float graph the shipped int8 one came from).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import _common  # noqa: F401
from _common import FACES, MEMES, SHARED

from facial_search.embedders.expression import ExpressionEmbedder
from facial_search.errors import ImageError
from facial_search.io.images import load_image
from facial_search.vision.faces import FaceFinder, FaceFinderOptions, detect_in_crop


def _back_to_back(detect, embed, rounds: int) -> tuple[float, float]:
    """Median ms of the landmarks call and of the embedding right after it (caches as in a real search)."""
    t_lm, t_e = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        detect()
        t1 = time.perf_counter()
        embed()
        t_e.append(time.perf_counter() - t1)
        t_lm.append(t1 - t0)
    return statistics.median(t_lm) * 1000, statistics.median(t_e) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--memes", type=int, default=40, help="meme templates with a face to use")
    ap.add_argument("--crops", type=int, default=100, help="FER+ test crops to use")
    ap.add_argument("--model", action="append", default=[], help="another ONNX graph to compare")
    args = ap.parse_args()

    embedders = {"shipped": ExpressionEmbedder()}
    embedders.update({Path(m).name: ExpressionEmbedder(model_file=m) for m in args.model})
    sets: dict[str, list] = {"photos": [], "memes": [], "FER+ crops": []}
    with FaceFinder.create_from_options(FaceFinderOptions(max_faces=5)) as finder:
        for name, paths, most in (
            ("photos", sorted(FACES.iterdir()), None),
            ("memes", sorted(MEMES.glob("*.jpg")), args.memes),
        ):
            for p in paths:
                if most is not None and len(sets[name]) >= most:
                    break
                try:
                    rgb = load_image(p)
                except ImageError:  # not an image we can read: not timed
                    continue
                faces = finder.detect(rgb)
                if faces:
                    sets[name].append((rgb, faces, lambda rgb=rgb: finder.detect(rgb)))
        for p in sorted((SHARED / "data" / "ferplus" / "FER2013Test").glob("*.png"))[: args.crops]:
            rgb = load_image(p)
            face = detect_in_crop(finder, rgb)
            if face:
                sets["FER+ crops"].append((rgb, [face], lambda rgb=rgb: detect_in_crop(finder, rgb)))

        print(f"per-face cost of the embedding next to the FaceLandmarker call, medians of {args.rounds} rounds")
        print(f"{'set':<12} {'images':>6} {'faces':>6} {'landmarks ms/face':>18}  " + "  ".join(
            f"{name + ' ms/face':>22} {'ratio':>6}" for name in embedders))  # fmt: skip
        for name, items in sets.items():
            n_faces = sum(len(f) for _, f, _ in items)
            t_lm = {k: 0.0 for k in embedders}
            t_e = {k: 0.0 for k in embedders}
            for rgb, faces, detect in items:
                for k, emb in embedders.items():
                    a, b = _back_to_back(detect, lambda rgb=rgb, f=faces, e=emb: e.embed(rgb, f), args.rounds)
                    t_lm[k] += a
                    t_e[k] += b
            lm = statistics.mean(t_lm.values())
            row = f"{name:<12} {len(items):>6} {n_faces:>6} {lm / n_faces:>18.2f}  "
            for k in embedders:
                row += f"{t_e[k] / n_faces:>22.3f} {t_e[k] / t_lm[k]:>6.3f}  "
            print(row)


if __name__ == "__main__":
    main()
