"""The reference face: a stylized face on a ``<canvas>``, driven by FLAME motion frames.

* :mod:`.model`: the pure face model: :class:`~avatarplayer.face.model.FacePose`, FLAME values to a
  pose, the idle animation, :class:`~avatarplayer.face.model.FaceDirector` (idle, turns, blends).
* :mod:`.painter`: :class:`~avatarplayer.face.painter.FacePainter`, a pose to Canvas 2D calls.
* :mod:`.recorder`: :class:`~avatarplayer.face.recorder.CanvasRecorder`, those calls as numbers, and
  ``REPLAY_JS`` (``js/replay.js``, package data), which replays them on the page's canvas.
* :mod:`.canvas`: :class:`~avatarplayer.face.canvas.FaceRenderer`, the renderer the player drives,
  with its idle timer.

Import :class:`FaceRenderer` from :mod:`avatarplayer` (lazily loaded: the player alone does not
need it, and it needs the ``protobuf`` wheel in the page).
"""
