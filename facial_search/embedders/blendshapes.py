"""Baseline embedder: MediaPipe's 52 blendshape scores, centred and L2-normalised.

A baseline only: 0.535 triplet accuracy on FER+ ``triplets_test.csv`` (``../shared/README.md``), against
0.333 for chance. Faces without landmarks (a crop the detector missed) get the neutral guess: the mean
blendshape vector, which after centring is the zero vector, i.e. equidistant-ish from everything.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from facial_search.vision.faces import NUM_BLENDSHAPES, Face

from . import l2_normalize

#: Centre subtracted from the blendshapes before normalising: 0.1 in every dimension (scores are in [0, 1]
#: and mostly small), so that a neutral face does not sit at the same direction as every other.
_CENTRE = np.full(NUM_BLENDSHAPES, 0.1, dtype=np.float32)


class BlendshapeEmbedder:
    """52-d baseline embedding from the FaceLandmarker blendshapes (see module docstring)."""

    name = "blendshapes"
    version = "1"
    dim = NUM_BLENDSHAPES

    def embed(self, image: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        """``(len(faces), 52) float32`` unit-norm; a face without blendshapes gets a fixed guess vector."""
        out = np.zeros((len(faces), self.dim), dtype=np.float32)
        for i, face in enumerate(faces):
            if face.blendshapes is None:
                out[i] = 1.0  # the guess: one fixed direction for every miss
            else:
                out[i] = face.blendshapes - _CENTRE
        return l2_normalize(out)
