"""The reference face: a pure model of the face and its moods (:mod:`.model`), and the renderer
that draws it on a ``<canvas>`` (:mod:`.canvas`, :class:`~avatarplayer.face.canvas.FaceRenderer`).

Import :class:`FaceRenderer` from :mod:`avatarplayer` (lazily loaded: the player alone does not
need it, and it needs the ``protobuf`` wheel in the page).
"""
