"""Live video: the session (:mod:`.session`), tracks and match hysteresis (:mod:`.tracking`), the One Euro
filter (:mod:`.one_euro`), drawing (:mod:`.overlay`)."""
