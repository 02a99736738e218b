"""Face alignment: one input recipe for FER+ crops, memes and camera frames.

Every face given to the learned expression embedder (:mod:`facial_search.embedders.expression`) is built
here, the same way whatever the source:

1. a similarity transform (rotation, uniform scale, translation; least squares, Umeyama) maps a set of
   *rigid* MediaPipe landmarks (eye corners, nose line, nostril wings: points that expressions barely move)
   onto :data:`TEMPLATE`, the canonical face;
2. the face is resampled to ``size x size`` pixels (area-averaged first when shrinking, so a large photo
   is not aliased), borders replicated, and converted to grey (ITU-R 601 luma, as OpenCV).

A face without landmarks (a ready-made crop on which the detector found nothing; about 7-9 % of FER+ crops)
is the whole image: its centred square, resized to ``size x size``.

The template is FER+'s own framing: :data:`TEMPLATE` holds, for each point of :data:`ALIGN_LANDMARKS`, the
median position (as a fraction of the crop's width and height) of that landmark over the FER2013Train crops
on which MediaPipe found a face (``python -m training.prepare --measure-template``). An aligned FER+ crop
therefore looks like the crop itself, and a whole-crop fallback lands in the same space as an aligned face.
"""

from __future__ import annotations

import cv2
import numpy as np

#: Side of the aligned face in pixels (FER+ crops are 48 x 48).
DEFAULT_SIZE = 48

#: MediaPipe FaceMesh indices used for alignment: eye corners (33, 133, 362, 263), nose line
#: (168, 6, 197, 195, 5, 4, 1) and nostril wings (98, 327). Mouth, brows and jaw are left out on purpose:
#: they move with the expression we want to keep.
ALIGN_LANDMARKS: tuple[int, ...] = (33, 133, 362, 263, 168, 6, 197, 195, 5, 4, 1, 98, 327)

#: Canonical positions ``(x, y)`` of :data:`ALIGN_LANDMARKS`, fractions of the output side: the medians
#: measured on the 26,845 FER2013Train crops with a detected face (see module docstring), then made
#: left-right symmetric about x = 0.5 (mirror pairs 33/263, 133/362, 98/327 averaged, nose line on the
#: axis) so that aligning a mirrored image gives the mirrored aligned face.
TEMPLATE = np.array(
    [
        [0.2402, 0.3809],  # 33
        [0.3954, 0.3944],  # 133
        [0.6046, 0.3944],  # 362
        [0.7598, 0.3809],  # 263
        [0.5000, 0.3709],  # 168
        [0.5000, 0.4187],  # 6
        [0.5000, 0.4590],  # 197
        [0.5000, 0.4945],  # 195
        [0.5000, 0.5325],  # 5
        [0.5000, 0.5771],  # 4
        [0.5000, 0.6105],  # 1
        [0.4052, 0.6300],  # 98
        [0.5948, 0.6300],  # 327
    ],
    dtype=np.float64,
)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (Umeyama 1991) mapping points ``src`` (N, 2) onto ``dst`` (N, 2).

    Returns:
        ``(2, 3) float64`` matrix ``M`` with ``dst ~= M @ [x, y, 1]``.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    var_s = (s0**2).sum() / len(src)
    cov = d0.T @ s0 / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1] = -1.0
    r = u @ np.diag(d) @ vt
    scale = (sig * d).sum() / max(var_s, 1e-12)
    m = np.zeros((2, 3))
    m[:, :2] = scale * r
    m[:, 2] = mu_d - scale * r @ mu_s
    return m


def _to_grey(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return image
    if image.shape[2] == 1:
        return image[:, :, 0]
    return cv2.cvtColor(np.ascontiguousarray(image[:, :, :3]), cv2.COLOR_RGB2GRAY)


def whole_face(image: np.ndarray, size: int = DEFAULT_SIZE) -> np.ndarray:
    """The whole image as the face: its centred square, resized to ``(size, size)`` grey uint8."""
    grey = _to_grey(image)
    h, w = grey.shape
    side = min(h, w)
    y0, x0 = (h - side) // 2, (w - side) // 2
    sq = grey[y0 : y0 + side, x0 : x0 + side]
    if side == size:
        return np.ascontiguousarray(sq)
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(sq, (size, size), interpolation=interp)


def alignment_matrix(landmarks: np.ndarray, image_size: tuple[int, int], size: int = DEFAULT_SIZE) -> np.ndarray:
    """``(2, 3)`` similarity transform from image pixels to the ``size x size`` canonical face.

    Args:
        landmarks: ``(478, 2 or 3)`` MediaPipe landmarks, x and y normalised by the image width and height.
        image_size: ``(width, height)`` of the image, pixels.
    """
    w, h = image_size
    src = np.asarray(landmarks, dtype=np.float64)[list(ALIGN_LANDMARKS), :2] * (w, h)
    return similarity_transform(src, TEMPLATE * size)


def align_face(image: np.ndarray, landmarks: np.ndarray | None, size: int = DEFAULT_SIZE) -> np.ndarray:
    """The face of ``image`` aligned to the canonical template, grey, ``(size, size) uint8``.

    Args:
        image: ``(H, W, 3) uint8`` RGB (``(H, W)`` grey is accepted too).
        landmarks: ``(478, 3)`` landmarks of one face, x and y normalised to [0, 1] by the image width and
            height (:attr:`facial_search.vision.faces.Face.landmarks`), or ``None``: the whole image is the face.
        size: output side in pixels.
    """
    if landmarks is None:
        return whole_face(image, size)
    h, w = image.shape[:2]
    m = alignment_matrix(landmarks, (w, h), size)
    scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    # Work on the source region of the output square only (with a margin): grey conversion and resizing of
    # a large photo then cost what the face costs.
    inv = cv2.invertAffineTransform(m)
    corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], dtype=np.float64) @ inv.T
    margin = 2.0 / min(scale, 1.0)
    x0 = int(np.clip(np.floor(corners[:, 0].min() - margin), 0, w - 1))
    y0 = int(np.clip(np.floor(corners[:, 1].min() - margin), 0, h - 1))
    x1 = int(np.clip(np.ceil(corners[:, 0].max() + margin), x0 + 1, w))
    y1 = int(np.clip(np.ceil(corners[:, 1].max() + margin), y0 + 1, h))
    grey = _to_grey(image[y0:y1, x0:x1])
    m = m @ np.array([[1.0, 0, x0], [0, 1.0, y0], [0, 0, 1]])
    if scale < 0.75 and x1 - x0 >= 2 and y1 - y0 >= 2:
        # Shrinking: area-average the region down to about the output scale first, then warp (no aliasing).
        nw = max(1, int(round((x1 - x0) * scale)))
        nh = max(1, int(round((y1 - y0) * scale)))
        small = cv2.resize(grey, (nw, nh), interpolation=cv2.INTER_AREA)
        sx, sy = (x1 - x0) / nw, (y1 - y0) / nh
        # pixel centres: small (u, v) <-> region ((u + .5) * sx - .5, (v + .5) * sy - .5)
        m = m @ np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]])
        grey = small
    return cv2.warpAffine(
        grey, m.astype(np.float64), (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
