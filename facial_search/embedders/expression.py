"""The learned expression embedder: aligned grey face -> 64-d unit-norm vector (ONNX Runtime, CPU).

Each face is aligned from its MediaPipe landmarks to the canonical FER+-framed template
(:func:`facial_search.vision.align.align_face`, 48x48 grey); a face without landmarks (a ready-made crop the
detector missed) is the whole image. The network (``facial_search/models/expression-v3.onnx``, a small CNN
trained on FER+ vote distributions, int8-quantised, see ``facial_search/models/MODEL_CARD.md``) embeds the
face and its mirror image and averages the two, so a mirrored face gets the same vector. No torch at run
time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np

from facial_search.errors import AssetError, ModelLoadError
from facial_search.vision.align import DEFAULT_SIZE, align_face
from facial_search.vision.faces import Face

from . import l2_normalize

#: File of the weights inside ``facial_search/models``.
MODEL_FILE = "expression-v3.onnx"

#: Generation of the shipped weights (the ``vN`` of :data:`MODEL_FILE`). The version an index records is this
#: plus the first 12 hex digits of the file's sha256, so vectors of other weights (a retrained model, or
#: ``model_file=``) are never mixed with these in one index.
GENERATION = "3"

#: Emotion order of the ``probs`` output (FER+ label order, without unknown / not-a-face).
EMOTIONS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")


def model_path():
    return resources.files("facial_search") / "models" / MODEL_FILE


class ExpressionEmbedder:
    """64-d learned expression embedding (see module docstring). Not thread-safe: one per process/thread."""

    name = "expression"
    dim = 64
    size = DEFAULT_SIZE

    def __init__(self, model_file: str | Path | None = None, threads: int = 1):
        """Load the shipped weights, or ``model_file`` (an ONNX graph with the same input and outputs).

        Attributes set: ``version`` (``"3+<sha256 prefix>"``, see :data:`GENERATION`).
        Raises:
            AssetError: ``model_file`` does not exist.
            ModelLoadError: the file cannot be read, is not an ONNX graph ONNX Runtime loads (random bytes, a
                truncated copy), or lacks the input ``image`` and the two outputs.
        """
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        source = Path(model_file) if model_file is not None else model_path()
        try:
            data = source.read_bytes()
        except FileNotFoundError:
            raise AssetError(f"{source}: model file not found") from None
        except OSError as e:
            raise ModelLoadError(f"{source}: cannot read the model file: {e.strerror or e}") from None
        self.version = f"{GENERATION}+{hashlib.sha256(data).hexdigest()[:12]}"
        try:
            self._session = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own classes (InvalidProtobuf, Fail, ...) for a bad graph
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ModelLoadError(f"{source}: not a loadable ONNX model ({first})") from None
        names = {o.name for o in self._session.get_outputs()}
        if [i.name for i in self._session.get_inputs()] != ["image"] or len(names) != 2:
            raise ModelLoadError(f"{source}: not an expression model (needs input 'image' and two outputs)")

    def faces_input(self, image: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        """``(N, 48, 48) float32`` aligned grey faces, pixels 0..255 (the network input)."""
        out = np.zeros((len(faces), self.size, self.size), dtype=np.float32)
        for i, f in enumerate(faces):
            out[i] = align_face(image, f.landmarks, self.size)
        return out

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Network on aligned faces ``(N, 48, 48)``: ``(embeddings (N, 64), probabilities (N, 8))``."""
        if len(x) == 0:
            return np.zeros((0, self.dim), np.float32), np.zeros((0, len(EMOTIONS)), np.float32)
        emb, probs = self._session.run(None, {"image": np.ascontiguousarray(x, dtype=np.float32)})
        return l2_normalize(emb), probs.astype(np.float32)

    def embed(self, image: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        """``(len(faces), 64) float32`` unit-norm; all faces of the image in one ``session.run``."""
        return self.run(self.faces_input(image, faces))[0]

    def emotions(self, image: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        """``(len(faces), 8)`` emotion probabilities (order :data:`EMOTIONS`), mirror-averaged."""
        return self.run(self.faces_input(image, faces))[1]
