"""CanvasRecorder (avatarplayer.face.recorder), as the painter uses it; its JavaScript half,
js/replay.js, is run for real in test_replay_js.py."""

from avatarplayer.face.model import FacePose
from avatarplayer.face.painter import FacePainter
from avatarplayer.face.recorder import CanvasRecorder


def test_styles_are_sent_once():
    rec = CanvasRecorder()
    painter = FacePainter(400, 400, recorder=rec)
    painter.paint(FacePose())
    _, first = rec.take()
    painter.paint(FacePose(jaw=0.5))
    _, second = rec.take()
    assert len(first) > 10 and all(s not in first for s in second)
