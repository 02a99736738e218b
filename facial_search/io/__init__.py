"""I/O at the edges: images in (:mod:`.images`), video frames in and out (:mod:`.video`),
model assets (:mod:`.assets`), progress bars (:mod:`.progress`), MediaPipe's native log (:mod:`.native_log`)."""
