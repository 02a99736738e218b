"""I/O at the edges: images in (:mod:`.images`), model assets (:mod:`.assets`), progress bars
(:mod:`.progress`), MediaPipe's native log (:mod:`.native_log`)."""
