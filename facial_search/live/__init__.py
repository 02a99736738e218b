"""Live video: match memes on a camera or a video with a smoothed face mesh.

- :mod:`.session`: :class:`LiveSession` (one frame in, tracked faces with stable matches out), :class:`LiveConfig`;
- :mod:`.run`: :func:`run_live` (``facial-search live``, configured by :class:`LiveOptions`), :func:`run_stream`;
- :mod:`.tracking`: track ids and match hysteresis; :mod:`.one_euro`: the One Euro filter (Casiez, Roussel &
  Vogel, CHI 2012); :mod:`.overlay`: drawing;
- frames in and out: :class:`~facial_search.io.video.FrameSource`, :class:`~facial_search.io.video.VideoSink`.

>>> from facial_search.live import LiveOptions, run_live
>>> stats = run_live(LiveOptions("memes.fsindex", video="clip.mp4", window=False, log="clip.jsonl"))
>>> stats.frames == len(open("clip.jsonl").readlines()), stats.frames_with_faces > 0
(True, True)
"""

from facial_search.io.video import FrameSource, VideoFrame, VideoSink, next_timestamp
from facial_search.live.one_euro import OneEuroFilter, OneEuroParams
from facial_search.live.run import LiveOptions, LiveStats, LiveWindow, live_frames, run_live, run_stream
from facial_search.live.session import FrameResult, LiveConfig, LiveSession, TrackedFace, annotate

__all__ = [
    "FrameResult",
    "FrameSource",
    "LiveConfig",
    "LiveOptions",
    "LiveSession",
    "LiveStats",
    "LiveWindow",
    "OneEuroFilter",
    "OneEuroParams",
    "TrackedFace",
    "VideoFrame",
    "VideoSink",
    "annotate",
    "live_frames",
    "next_timestamp",
    "run_live",
    "run_stream",
]
