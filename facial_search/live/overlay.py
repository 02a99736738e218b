"""Drawing the live view with OpenCV, in place on ``(H, W, 3) uint8`` BGR frames.

Per face: the face mesh (its 478 landmarks as dots and the FaceMesh contours; optionally the tesselation), the box,
the track id and thumbnails of its top-k memes with their distances; the frame rate in the top-left corner.
Meme thumbnails are cut around the matched meme face, resized once and cached by index id
(:class:`ThumbnailCache`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from mediapipe.tasks.python.vision import FaceLandmarksConnections as _C

from facial_search.io.images import load_image

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _edges(connections) -> np.ndarray:
    return np.array([(c.start, c.end) for c in connections], dtype=np.int64)


#: ``(E, 2)`` landmark index pairs: the 2556 edges of the FaceMesh tesselation and its 124 contour edges
#: (face oval, eyes, brows, lips) plus the irises.
TESSELATION_EDGES = _edges(_C.FACE_LANDMARKS_TESSELATION)
CONTOUR_EDGES = _edges(
    list(_C.FACE_LANDMARKS_CONTOURS) + list(_C.FACE_LANDMARKS_LEFT_IRIS) + list(_C.FACE_LANDMARKS_RIGHT_IRIS)
)

#: BGR colours: one per track id (cycled), mesh, text.
TRACK_COLOURS = ((70, 57, 230), (255, 170, 0), (80, 200, 60), (0, 200, 255), (200, 80, 200), (255, 255, 0))
MESH_COLOUR = (200, 200, 200)
TEXT_COLOUR = (255, 255, 255)


def track_colour(track_id: int) -> tuple[int, int, int]:
    """A BGR colour for a track id (stable across frames)."""
    return TRACK_COLOURS[track_id % len(TRACK_COLOURS)]


def draw_mesh(frame: np.ndarray, points_px: np.ndarray, colour=(70, 57, 230), tesselation: bool = False) -> None:
    """The face mesh of one face on ``frame``: its 478 landmarks as dots and its contours as lines.

    Args:
        frame: ``(H, W, 3) uint8`` BGR, drawn on in place.
        points_px: ``(478, 2+)`` landmark coordinates in pixels (x, y first).
        colour: BGR colour of the contours.
        tesselation: also draw the 2556-edge tesselation, thin (about 1 ms a face more on 2 cores; the dots
            and contours take about 0.1 ms).
    """
    h, w = frame.shape[:2]
    p = np.round(points_px[:, :2] * 4).astype(np.int32)  # 2 fractional bits (shift=2): sub-pixel lines
    if tesselation:
        cv2.polylines(frame, p[TESSELATION_EDGES], False, MESH_COLOUR, 1, cv2.LINE_8, 2)
    else:  # every landmark as a 2x2 dot, vectorised (no per-point drawing call)
        xy = np.round(points_px[:, :2]).astype(np.int64)
        x = np.clip(np.r_[xy[:, 0], xy[:, 0] + 1], 0, w - 1)
        y = np.clip(np.r_[xy[:, 1], xy[:, 1] + 1], 0, h - 1)
        frame[np.r_[y, y], np.r_[x, x[::-1]]] = MESH_COLOUR
    cv2.polylines(frame, p[CONTOUR_EDGES], False, colour, 1, cv2.LINE_AA, 2)


def draw_label(frame: np.ndarray, text: str, org: tuple[int, int], colour, scale: float = 0.45) -> None:
    """``text`` on a filled ``colour`` strip whose bottom-left corner is ``org`` (pixels), clipped to the frame."""
    (tw, th), base = cv2.getTextSize(text, _FONT, scale, 1)
    h, w = frame.shape[:2]
    x = int(np.clip(org[0], 0, max(0, w - tw - 4)))
    y = int(np.clip(org[1], th + base + 2, h))
    cv2.rectangle(frame, (x, y - th - base - 2), (x + tw + 4, y), colour, -1)
    cv2.putText(frame, text, (x + 2, y - base), _FONT, scale, TEXT_COLOUR, 1, cv2.LINE_AA)


def draw_fps(frame: np.ndarray, fps: float) -> None:
    """The processing frame rate in the top-left corner."""
    draw_label(frame, f"{fps:5.1f} fps", (4, 4), (40, 40, 40), 0.5)


@dataclass(frozen=True)
class ShownMatch:
    """A match to draw: index id, title and distance."""

    id: int
    title: str
    distance: float


class ThumbnailCache:
    """Square BGR thumbnails of meme faces, by index id, cut and resized once (LRU, ``capacity`` entries).

    Args:
        index: the :class:`~facial_search.index.MemeIndex` whose entries (source, box) are drawn.
        size: thumbnail side, pixels.
        margin: share of the face box side added around it.
        capacity: most thumbnails kept.
    """

    def __init__(self, index, size: int = 64, margin: float = 0.35, capacity: int = 256):
        self.index, self.size, self.margin, self.capacity = index, size, margin, capacity
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def get(self, id: int) -> np.ndarray:
        """``(size, size, 3) uint8`` BGR thumbnail of the meme face with this id (grey when the image is gone)."""
        thumb = self._cache.get(id)
        if thumb is not None:
            self._cache.move_to_end(id)
            return thumb
        thumb = self._make(id)
        self._cache[id] = thumb
        if len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        return thumb

    def _make(self, id: int) -> np.ndarray:
        s = self.size
        try:
            entry = self.index.entry(id)
            rgb = load_image(entry.source)
        except Exception:  # a moved or unreadable meme must not stop the live view
            return np.full((s, s, 3), 128, np.uint8)
        x, y, w, h = entry.box
        side = int(max(w, h) * (1 + 2 * self.margin))
        cx, cy = x + w // 2, y + h // 2
        H, W = rgb.shape[:2]
        x0, y0 = max(0, cx - side // 2), max(0, cy - side // 2)
        crop = rgb[y0 : min(H, y0 + side), x0 : min(W, x0 + side)]
        if crop.size == 0:
            crop = rgb
        ch, cw = crop.shape[:2]
        scale = s / max(ch, cw)
        small = cv2.resize(crop, (max(1, round(cw * scale)), max(1, round(ch * scale))), interpolation=cv2.INTER_AREA)
        out = np.full((s, s, 3), 30, np.uint8)
        oy, ox = (s - small.shape[0]) // 2, (s - small.shape[1]) // 2
        out[oy : oy + small.shape[0], ox : ox + small.shape[1]] = small[:, :, ::-1]
        return out


def _paste(frame: np.ndarray, img: np.ndarray, x: int, y: int) -> None:
    H, W = frame.shape[:2]
    h, w = img.shape[:2]
    x0, y0, x1, y1 = max(0, x), max(0, y), min(W, x + w), min(H, y + h)
    if x1 > x0 and y1 > y0:
        frame[y0:y1, x0:x1] = img[y0 - y : y1 - y, x0 - x : x1 - x]


def draw_matches(
    frame: np.ndarray, box: Sequence[int], matches: Sequence[ShownMatch], thumbs: ThumbnailCache, colour
) -> None:
    """Thumbnails of ``matches`` (top-1 first) in a column beside the face ``box`` ``(x, y, w, h)``: right
    of it when there is room, else left; each with its rank and distance (the top-1's title is on the box)."""
    if not matches:
        return
    H, W = frame.shape[:2]
    s = thumbs.size
    x, y, w, h = box
    col_x = x + w + 6 if x + w + 6 + s <= W else max(0, x - 6 - s)
    cell = s + 14
    y0 = int(np.clip(y, 0, max(0, H - cell * len(matches))))
    for r, m in enumerate(matches):
        ty = y0 + r * cell
        _paste(frame, thumbs.get(m.id), col_x, ty)
        cv2.rectangle(frame, (col_x, ty), (col_x + s - 1, ty + s - 1), colour, 2 if r == 0 else 1)
        cv2.rectangle(frame, (col_x, ty + s), (col_x + s - 1, ty + cell - 1), (30, 30, 30), -1)
        cv2.putText(
            frame, f"{r + 1}: {m.distance:.3f}", (col_x + 2, ty + s + 10), _FONT, 0.35, TEXT_COLOUR, 1, cv2.LINE_AA
        )


def draw_face(
    frame: np.ndarray,
    track_id: int,
    box: Sequence[int],
    points_px: np.ndarray | None,
    matches: Sequence[ShownMatch],
    thumbs: ThumbnailCache | None,
    tesselation: bool = False,
) -> None:
    """Everything drawn for one tracked face: mesh, box, track id, matches."""
    colour = track_colour(track_id)
    if points_px is not None:
        draw_mesh(frame, points_px, colour, tesselation)
    x, y, w, h = (int(v) for v in box)
    cv2.rectangle(frame, (x, y), (x + w, y + h), colour, 2)
    best = f": {matches[0].title}" if matches else ""
    draw_label(frame, f"#{track_id}{best}"[:40], (x, y - 2), colour)
    if thumbs is not None:
        draw_matches(frame, (x, y, w, h), matches, thumbs, colour)
