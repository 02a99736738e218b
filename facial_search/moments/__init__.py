"""Reaction moments (issue 18): videos indexed as moments, runs of a face's samples whose expression holds.

    video file ──decode every sample_ms (PyAV)──▶ upright RGB frames ──FaceLandmarker (VIDEO mode) + Tracker──▶
    face tracks ──embedder──▶ per-track samples ──cut (segment)──▶ moments: one index entry each

- :mod:`.decode`: PyAV in: :func:`probe`, :func:`sample_frames` (streamed), :func:`frame_at`, typed errors.
- :mod:`.sampling`: sampled frames -> :class:`TrackSamples` per track (the live command's tracking).
- :mod:`.segment`: a track's samples -> :class:`Moment` s (the documented, measured rule).
- :mod:`.extract`: a file -> :class:`VideoMoments` (the three above, streaming).

A moment is an index entry with ``t_start``, ``t_end``, ``t_frame``, ``track`` (seconds; the contract of
:class:`~facial_search.index.store.Entry`), the box and blendshapes of its most typical sample and its mean
embedding; :func:`moment_entry` builds its entry dict.
"""

from __future__ import annotations

from facial_search.moments.decode import (
    VIDEO_SUFFIXES,
    NoVideoStreamError,
    VideoError,
    VideoInfo,
    format_span,
    format_time,
    frame_at,
    is_video,
    probe,
    sample_frames,
)
from facial_search.moments.extract import SAMPLE_MS, VideoMoments, video_moments
from facial_search.moments.segment import Moment, cut_track, split_runs


def moment_entry(moment: Moment, number: int, source: str, title: str) -> dict:
    """The :meth:`MemeIndex.add` entry of ``moment``: ``face`` is its ``number`` within the video (time order);
    times rounded to the millisecond."""
    e = {
        "source": source,
        "face": number,
        "box": moment.box,
        "title": title,
        "picture_hash": moment.picture_hash,
        "t_start": round(moment.t_start, 3),
        "t_end": round(moment.t_end, 3),
        "t_frame": round(moment.t_frame, 3),
        "track": moment.track,
    }
    if moment.blendshapes is not None:
        e["blendshapes"] = moment.blendshapes
    return e


__all__ = [
    "SAMPLE_MS", "VIDEO_SUFFIXES", "Moment", "NoVideoStreamError", "VideoError", "VideoInfo", "VideoMoments",
    "cut_track", "format_span", "format_time", "frame_at", "is_video", "moment_entry", "probe", "sample_frames",
    "split_runs", "video_moments",
]  # fmt: skip
