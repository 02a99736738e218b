"""facial-search: find the memes whose facial expression matches yours.

>>> from facial_search import FacialSearch
>>> fs = FacialSearch.open("memes.fsindex")
>>> for face in fs.search("me.jpg", k=3):
...     print(face.box, [(m.title, round(m.distance, 3)) for m in face.matches])
"""

__version__ = "0.1.0"
