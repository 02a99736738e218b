"""Faces: MediaPipe FaceLandmarker (Tasks API), every face in an image or video frame.

Model: MediaPipe FaceLandmarker bundle v1 (BlazeFace short-range detector, 478-point landmarks from a
256x256 crop, 52 ARKit-style blendshapes); see https://ai.google.dev/edge/mediapipe/solutions/vision/face_landmarker
"""

from __future__ import annotations

import atexit
import concurrent.futures.thread  # noqa: F401  (registers its exit hook now, before ours: _close_open_finders)
import os
import threading
import weakref
from dataclasses import dataclass, field
from typing import Literal

import cv2
import mediapipe as mp
import numpy as np
from mediapipe.tasks.python import BaseOptions, vision

from facial_search.errors import ModelLoadError
from facial_search.io.assets import find_asset

#: Landmark count of the FaceLandmarker v1 model (468 FaceMesh points + 10 iris points).
NUM_LANDMARKS = 478
#: Blendshape count of the FaceLandmarker v1 model (``_neutral`` + 51 ARKit blendshapes).
NUM_BLENDSHAPES = 52


@dataclass(frozen=True, eq=False)
class Face:
    """One face found in an image.

    Attributes:
        box: bounding box ``(x, y, w, h)`` in pixels of the image, from the landmarks' extent, clipped to it.
        landmarks: ``(478, 3) float32``; x, y normalised to [0, 1] by image width and height, z in the same
            scale as x, relative to the head centre (smaller is nearer the camera). ``None`` for a whole-image
            face (see :func:`whole_image_face`).
        blendshapes: ``(52,) float32`` scores in [0, 1], ordered as :data:`BLENDSHAPE_NAMES`; ``None`` when
            no landmarks were found.
        transformation_matrix: ``(4, 4) float32`` facial transformation matrix (canonical face model to the
            detected face, centimetres), or ``None``.
        image_size: ``(width, height)`` of the image the face was found in, pixels.
    """

    box: tuple[int, int, int, int]
    landmarks: np.ndarray | None
    blendshapes: np.ndarray | None
    transformation_matrix: np.ndarray | None
    image_size: tuple[int, int]

    def landmarks_px(self) -> np.ndarray:
        """Landmarks in pixels: ``(478, 3) float32``, x and y in pixels, z scaled by the image width."""
        if self.landmarks is None:
            raise ValueError("this face has no landmarks (whole-image face)")
        w, h = self.image_size
        return self.landmarks * np.array([w, h, w], dtype=np.float32)


def whole_image_face(image: np.ndarray) -> Face:
    """A :class:`Face` covering the whole image, without landmarks: used for ready-made face crops (FER+)
    on which the detector finds nothing, so that such an image is still embedded, never skipped."""
    h, w = image.shape[:2]
    return Face(box=(0, 0, w, h), landmarks=None, blendshapes=None, transformation_matrix=None, image_size=(w, h))


@dataclass
class FaceFinderOptions:
    """Options of :class:`FaceFinder` (MediaPipe ``FaceLandmarkerOptions`` with sane defaults).

    Attributes:
        model_path: path of ``face_landmarker.task``; ``None`` finds or downloads it (:mod:`facial_search.io.assets`).
        max_faces: most faces returned per image (MediaPipe ``num_faces``).
        min_detection_confidence: BlazeFace score threshold, [0, 1].
        min_presence_confidence: face presence threshold of the landmark model, [0, 1].
        min_tracking_confidence: VIDEO mode: below it the detector runs again instead of tracking, [0, 1].
        running_mode: ``"image"`` (independent images) or ``"video"`` (frames with increasing timestamps).
    """

    model_path: str | os.PathLike | None = None
    max_faces: int = 8
    min_detection_confidence: float = 0.5
    min_presence_confidence: float = 0.5
    min_tracking_confidence: float = 0.5
    running_mode: Literal["image", "video"] = "image"
    extra: dict = field(default_factory=dict)


class FaceFinder:
    """Every face in an image: bounding box, 478 landmarks, 52 blendshapes, transformation matrix.

    Not thread-safe: use one per thread or process. A context manager; :meth:`close` releases the graph.

    >>> from facial_search import load_image
    >>> with FaceFinder.create_from_options(FaceFinderOptions()) as finder:
    ...     faces = finder.detect(load_image("me.jpg"))
    >>> faces[0].landmarks.shape, faces[0].blendshapes.shape
    ((478, 3), (52,))
    """

    def __init__(self, landmarker: vision.FaceLandmarker, options: FaceFinderOptions):
        self._landmarker = landmarker
        self.options = options
        _OPEN_FINDERS.add(self)

    @classmethod
    def create_from_options(cls, options: FaceFinderOptions | None = None) -> FaceFinder:
        """Build a finder; raises :class:`~facial_search.errors.AssetError` if the model cannot be found,
        :class:`~facial_search.errors.ModelLoadError` if it is no ``.task`` bundle MediaPipe loads."""
        options = options or FaceFinderOptions()
        model = find_asset(path=options.model_path)
        mode = vision.RunningMode.VIDEO if options.running_mode == "video" else vision.RunningMode.IMAGE
        mp_options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(model)),
            running_mode=mode,
            num_faces=options.max_faces,
            min_face_detection_confidence=options.min_detection_confidence,
            min_face_presence_confidence=options.min_presence_confidence,
            min_tracking_confidence=options.min_tracking_confidence,
            output_face_blendshapes=True,
            output_facial_transformation_matrixes=True,
            **options.extra,
        )
        try:
            landmarker = vision.FaceLandmarker.create_from_options(mp_options)
        except (RuntimeError, ValueError) as e:  # MediaPipe: "Unable to open zip archive.", a bad graph...
            raise ModelLoadError(f"{model}: not a MediaPipe FaceLandmarker model ({e})") from None
        return cls(landmarker, options)

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in one image (IMAGE mode).

        Args:
            image: ``(H, W, 3) uint8`` RGB (see :func:`facial_search.io.images.load_image`).

        Returns:
            faces sorted left to right by box x; empty when there is none.
        """
        return self._faces(self._landmarker.detect(_mp_image(image)), image)

    def detect_for_video(self, image: np.ndarray, timestamp_ms: int) -> list[Face]:
        """Faces in one video frame (VIDEO mode: tracks between frames); ``timestamp_ms`` must increase."""
        return self._faces(self._landmarker.detect_for_video(_mp_image(image), int(timestamp_ms)), image)

    def close(self) -> None:
        """Release MediaPipe's graph (idempotent). A finder left open is closed at interpreter exit."""
        _OPEN_FINDERS.discard(self)
        if self._landmarker is not None:
            self._landmarker.close()
            self._landmarker = None

    def __enter__(self) -> FaceFinder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # collected while open (never at interpreter exit: see _close_open_finders)
        try:
            self.close()
        except Exception:
            pass

    @staticmethod
    def _faces(result: vision.FaceLandmarkerResult, image: np.ndarray) -> list[Face]:
        h, w = image.shape[:2]
        faces = []
        for i, lms in enumerate(result.face_landmarks):
            lm = np.array([(p.x, p.y, p.z) for p in lms], dtype=np.float32)
            bs = None
            if result.face_blendshapes and i < len(result.face_blendshapes):
                bs = np.array([c.score for c in result.face_blendshapes[i]], dtype=np.float32)
            mat = None
            if result.facial_transformation_matrixes and i < len(result.facial_transformation_matrixes):
                mat = np.asarray(result.facial_transformation_matrixes[i], dtype=np.float32)
            faces.append(Face(box_from_landmarks(lm, w, h), lm, bs, mat, (w, h)))
        faces.sort(key=lambda f: (f.box[0], f.box[1]))
        return faces


#: Finders not yet closed. MediaPipe's ``FaceLandmarker.close`` runs on a thread pool; a landmarker still open
#: when the interpreter tears its modules down prints ``Exception ignored in ... __del__ ... TypeError``
#: (its module globals are gone). So open finders are closed at the start of interpreter exit.
_OPEN_FINDERS: weakref.WeakSet[FaceFinder] = weakref.WeakSet()


def _close_open_finders() -> None:
    for finder in list(_OPEN_FINDERS):
        try:
            finder.close()
        except Exception:  # exiting anyway: a landmarker that cannot close must not stop the others
            pass


# ``threading._register_atexit`` hooks run when the main thread ends, last registered first; the thread pools
# MediaPipe's close needs are shut down by concurrent.futures' hook, registered by the import at the top, so
# this one runs before it (plain ``atexit`` hooks run after it: too late).
_register_exit = getattr(threading, "_register_atexit", atexit.register)
_register_exit(_close_open_finders)

#: Share of each side added as edge padding around a ready-made face crop before detection: on 48x48 FER+
#: crops it lifts the detection rate from about 88% to 92% (the detector wants some context around a face).
CROP_PAD = 1 / 6

#: Unsharp-mask strengths ``(amount, sigma px)`` tried, in order, on a crop where the plain one gives no face.
#: Blurry crops (a 48x48 face halved and scaled back) defeat BlazeFace; sharpened, more are found. Measured on
#: the first 400 FER2013Test crops: clean 92.0% -> 93.8%, halved-and-back 53.8% -> 73.3% with these tries
#: and the unpadded crop last.
CROP_SHARPEN = ((0.8, 1.0), (1.5, 1.0), (3.0, 1.5))


def _unsharp(image: np.ndarray, amount: float, sigma: float) -> np.ndarray:
    return cv2.addWeighted(image, 1 + amount, cv2.GaussianBlur(image, (0, 0), sigma), -amount, 0)


def _crop_views(crop: np.ndarray, pad: float):
    """The images :func:`detect_in_crop` tries, lazily, each with its top and left padding in pixels."""
    h, w = crop.shape[:2]
    py, px = max(1, round(h * pad)), max(1, round(w * pad))
    padded = np.pad(crop, ((py, py), (px, px), (0, 0)), mode="edge")
    yield padded, py, px
    for amount, sigma in CROP_SHARPEN:
        yield _unsharp(padded, amount, sigma), py, px
    yield crop, 0, 0


def detect_in_crop(finder: FaceFinder, crop: np.ndarray, pad: float = CROP_PAD) -> Face | None:
    """The largest face in a ready-made face crop (a FER+ image, a face someone cut out).

    Tried in order until one finds a face: the crop edge-padded by ``pad`` of each side; the same sharpened
    by each :data:`CROP_SHARPEN` unsharp mask; the crop as it is. Only the detection sees the sharpened
    pixels: the returned landmarks are positions, which the embedder reads from the original crop.

    Args:
        crop: ``(H, W, 3) uint8`` RGB face crop (e.g. a 48x48 FER+ image).

    Returns:
        the face with landmarks, box and image size mapped back to the unpadded crop (landmarks may fall
        slightly outside [0, 1]), or ``None`` when none is found.
    """
    h, w = crop.shape[:2]
    detections = ((finder.detect(view), ty, tx) for view, ty, tx in _crop_views(crop, pad))
    found, ty, tx = next((d for d in detections if d[0]), ([], 0, 0))
    if not found:
        return None
    face = max(found, key=lambda f: f.box[2] * f.box[3])
    lm = face.landmarks.copy()
    lm[:, 0] = (lm[:, 0] * (w + 2 * tx) - tx) / w
    lm[:, 1] = (lm[:, 1] * (h + 2 * ty) - ty) / h
    lm[:, 2] = lm[:, 2] * (w + 2 * tx) / w
    return Face(box_from_landmarks(lm, w, h), lm, face.blendshapes, face.transformation_matrix, (w, h))


def box_from_landmarks(landmarks: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """Bounding box ``(x, y, w, h)`` in pixels of normalised landmarks ``(N, 3)``, clipped to the image."""
    x0 = int(np.clip(np.floor(landmarks[:, 0].min() * width), 0, width - 1))
    y0 = int(np.clip(np.floor(landmarks[:, 1].min() * height), 0, height - 1))
    x1 = int(np.clip(np.ceil(landmarks[:, 0].max() * width), x0 + 1, width))
    y1 = int(np.clip(np.ceil(landmarks[:, 1].max() * height), y0 + 1, height))
    return (x0, y0, x1 - x0, y1 - y0)


def box_iou(a, b) -> float:
    """Intersection over union of two boxes ``(x, y, w, h)``, in [0, 1]."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


#: Tiles searched when the whole image gives no face: a ``TILE_GRID`` x ``TILE_GRID`` grid of tiles that
#: overlap by ``TILE_OVERLAP`` of a tile (2x2: each tile 4/7 of the side). BlazeFace short-range sees the
#: whole image at 128x128 and misses faces much smaller than the frame (a panel of a comic-strip meme, a
#: face in a crowd); in a tile they are larger.
TILE_GRID = 2
TILE_OVERLAP = 0.25
#: Detection and presence confidence demanded in tiles (whole images: 0.5). On the 1,118 imgflip templates
#: (of 2,105) where the whole image gives no face, 2x2 tiles at 0.5 found a face in 211, but 6 of 48
#: sampled were not faces (text, a wheel, a clock); at 0.75 they find one in 119 and all 48 sampled were
#: faces (cartoon faces included). 3x3 tiles found more, with about a quarter not faces.
TILE_MIN_CONFIDENCE = 0.75
#: Images whose shorter side is under this many pixels are not tiled: a face that small has no expression
#: left to read (FER+ faces are 48 px).
TILE_MIN_SIDE = 96


def tile_windows(height: int, width: int, grid: int = TILE_GRID, overlap: float = TILE_OVERLAP):
    """``(y, x, h, w)`` pixel windows of a ``grid`` x ``grid`` tiling whose neighbours overlap by
    ``overlap`` of a tile, covering the whole image."""
    th = max(1, round(height / (grid - (grid - 1) * overlap)))
    tw = max(1, round(width / (grid - (grid - 1) * overlap)))
    steps = max(1, grid - 1)
    return [
        (round(i * (height - th) / steps), round(j * (width - tw) / steps), th, tw)
        for i in range(grid)
        for j in range(grid)
    ]


def detect_in_tiles(finder: FaceFinder, image: np.ndarray, grid: int = TILE_GRID) -> list[Face]:
    """Faces found in overlapping tiles of ``image`` (see :data:`TILE_GRID`), mapped back to the whole image.

    Meant for images where :meth:`FaceFinder.detect` on the whole finds nothing, with a finder of
    :data:`TILE_MIN_CONFIDENCE`; images under :data:`TILE_MIN_SIDE` pixels give none. A face seen in two
    overlapping tiles is kept once (the larger find, boxes overlapping by IoU > 0.3); at most
    ``finder.options.max_faces``, largest first, then sorted left to right.

    Args:
        image: ``(H, W, 3) uint8`` RGB.

    Returns:
        faces as :meth:`FaceFinder.detect` gives them: landmarks normalised by the whole image's size; the
        transformation matrix is the tile's (the same face seen through a narrower camera).
    """
    h, w = image.shape[:2]
    if min(h, w) < TILE_MIN_SIDE:
        return []
    found: list[Face] = []
    for y, x, th, tw in tile_windows(h, w, grid):
        for face in finder.detect(np.ascontiguousarray(image[y : y + th, x : x + tw])):
            lm = face.landmarks * np.array([tw / w, th / h, tw / w], dtype=np.float32)
            lm[:, 0] += x / w
            lm[:, 1] += y / h
            found.append(Face(box_from_landmarks(lm, w, h), lm, face.blendshapes, face.transformation_matrix, (w, h)))
    kept: list[Face] = []
    for face in sorted(found, key=lambda f: -f.box[2] * f.box[3]):
        if all(box_iou(face.box, k.box) <= 0.3 for k in kept):
            kept.append(face)
    kept = kept[: finder.options.max_faces]
    return sorted(kept, key=lambda f: (f.box[0], f.box[1]))


def _mp_image(image: np.ndarray) -> mp.Image:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
    return mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image))


#: Names of the 52 blendshapes in model order (FaceLandmarker v1 blendshapes model card).
BLENDSHAPE_NAMES: tuple[str, ...] = (
    "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight", "eyeLookDownLeft",
    "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft", "eyeLookOutRight", "eyeLookUpLeft",
    "eyeLookUpRight", "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft",
    "jawOpen", "jawRight", "mouthClose", "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft",
    "mouthFrownRight", "mouthFunnel", "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthPressLeft",
    "mouthPressRight", "mouthPucker", "mouthRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower",
    "mouthShrugUpper", "mouthSmileLeft", "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight",
    "mouthUpperUpLeft", "mouthUpperUpRight", "noseSneerLeft", "noseSneerRight",
)  # fmt: skip
