"""How much of a model's triplet accuracy a 2x down-up costs, by the network alone.

    FACIAL_SEARCH_MODELS=../shared/models python -m training.down2_gap MODEL.onnx [MODEL.onnx ...]

For each exported graph (float or int8, :func:`training.train.export_onnx`'s interface), the triplet accuracy
on one split's cached aligned faces (``aligned_<split>_48_v2.npz``) and on the same crops halved and brought
back up with PIL bilinear -- :func:`facial_search.evaluate.transform_image`'s ``downscale2`` -- then aligned
with the *clean* crops' landmarks (:func:`training.prepare.down2_views`, row 0). The detector is kept out:
``facial-search eval --transform downscale2`` loses this much plus what the detector loses on blurry crops.

A model trained on down-up views only (``python -m training.train --p-down2 1.0``) scores what is left of
the expression in a 24x24 face: the floor of the loss for this network and data.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from . import prepare, train


def down2_gap(model: Path, split: str = "FER2013Valid", triplets: Path | None = None,
              cache: Path | None = None) -> dict[str, dict[str, float]]:  # fmt: skip
    """``{"clean": accuracies, "down2": accuracies}`` (:func:`training.train.triplet_accuracy`'s dicts) of
    ``model`` on ``split``'s cached faces; makes the split's down-up views first if missing (~5 s for
    FER2013Valid). Raises ``FileNotFoundError`` when the split's aligned faces are not prepared."""
    data = train.load_split(split, cache)
    trip = train.read_triplets(triplets or prepare.data_dir() / f"triplets_{split.removeprefix('FER2013').lower()}.csv")
    with np.load(prepare.down2_split(split, cache=cache)) as d:
        assert list(d["names"]) == data["names"]
        down = d["views"][:, 0]
    return {"clean": train.triplet_accuracy(train.embed_onnx(model, data["images"])[0], data["names"], trip),
            "down2": train.triplet_accuracy(train.embed_onnx(model, down)[0], data["names"], trip)}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--split", default="FER2013Valid", help="never FER2013Test for choosing anything")
    ap.add_argument("--cache", type=Path, default=None)
    a = ap.parse_args(argv)
    for m in a.models:
        r = down2_gap(m, a.split, cache=a.cache)
        c, d = r["clean"], r["down2"]
        print(f"{m}: clean {c['overall']:.4f} (ONE_CLASS {c.get('ONE_CLASS', float('nan')):.4f})  "
              f"down2 {d['overall']:.4f} (ONE_CLASS {d.get('ONE_CLASS', float('nan')):.4f})  "
              f"loss {100 * (c['overall'] - d['overall']):.2f} points")  # fmt: skip


if __name__ == "__main__":
    main()
