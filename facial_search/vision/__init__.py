"""Faces in pixels: MediaPipe FaceLandmarker, crops and tiles (:mod:`.faces`), alignment to the canonical
face (:mod:`.align`)."""
