"""FaceRenderer (avatarplayer.face.canvas) under CPython with a stand-in browser (tests/renderer/fakes.py)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from avatarplayer.face import canvas, painter, recorder
from avatarplayer.face.canvas import FaceRenderer
from avatarplayer.face.recorder import CanvasRecorder
from avatarplayer.wire.messages import FLAME_FIELDS, build_message

from .fakes import Browser, FakeCanvas, FakeClock


def flame(jaw=0.0, lid=0.0):
    values = {name: [0.0] * size for name, size in FLAME_FIELDS.items()}
    values["jaw_pose"] = [0.32 * jaw, 0.0, 0.0]
    values["eye_lid"] = [lid, lid]
    return values


def frame(jaw=0.0, lid=0.0, cid="c1"):
    return build_message(flame(jaw, lid), req_id=cid)


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def browser(monkeypatch, clock):
    return Browser(monkeypatch, clock)


@pytest.fixture
def renderer(browser, clock):
    r = FaceRenderer(FakeCanvas(), clock=clock, seed=1)
    yield r
    r.close()


def replayed(browser, run=-1):
    """The canvas calls of one replayed frame."""
    replay = browser.replays[-1]
    rec = CanvasRecorder()
    rec.styles = replay.styles
    return rec.calls(replay.runs[run])


# ------------------------------------------------------------------ construction


def test_draws_the_idle_face_at_once_and_starts_a_25_fps_timer(renderer, browser):
    assert renderer.stats.frames_drawn == 1 and renderer.mode == "idle"
    (proxy, period), = browser.intervals.values()
    assert period == pytest.approx(40.0)
    assert len(browser.replays[-1].runs) == 1


@pytest.mark.parametrize("option, value, error", [
    ("blend_in_frames", -1, ValueError), ("blend_out_frames", 1.5, TypeError),
    ("disconnect_blend_frames", 10_000, ValueError), ("idle_fps", 0, ValueError), ("idle_fps", "25", ValueError),
    ("background", "", TypeError), ("background", 3, TypeError), ("fit_canvas", "yes", TypeError),
    ("autostart", 1, TypeError), ("jaw_full_open", 0.0, ValueError), ("jaw_full_open", True, ValueError),
    ("seed", "x", TypeError), ("clock", 5, TypeError),
])
def test_bad_options_raise_naming_the_option(browser, option, value, error):
    with pytest.raises(error, match=option):
        FaceRenderer(FakeCanvas(), **{option: value})


def test_a_canvas_is_required(browser):
    with pytest.raises(TypeError, match="canvas"):
        FaceRenderer(None)
    with pytest.raises(TypeError, match="canvas"):
        FaceRenderer(object())


def test_fits_the_backing_store_to_the_css_size_and_device_pixel_ratio(monkeypatch, clock):
    Browser(monkeypatch, clock, dpr=2.0)
    canvas = FakeCanvas(300, 150, client=(240, 180))
    r = FaceRenderer(canvas, clock=clock, autostart=False)
    assert (canvas.width, canvas.height) == (480, 360)
    assert r.painter.scale == pytest.approx(360 / 400)
    canvas.clientWidth, canvas.clientHeight = 320, 320
    r.fit()
    assert (canvas.width, canvas.height) == (640, 640) and r.painter.scale == pytest.approx(1.6)
    r2 = FaceRenderer(FakeCanvas(300, 150, client=(240, 180)), clock=clock, autostart=False, fit_canvas=False)
    assert (r2.canvas.width, r2.canvas.height) == (300, 150)


# ------------------------------------------------------------------ the renderer contract


def test_frames_are_decoded_and_drawn_with_the_blend_into_the_turn(renderer, clock):
    drawn = renderer.stats.frames_drawn
    jaws = []
    for _ in range(12):
        clock.advance(40)
        renderer.yield_frames_data([frame(jaw=1.0)], "c1")
        jaws.append(renderer.stats.jaw)
    assert renderer.stats.frames_received == 12 and renderer.stats.frames_drawn == drawn + 12
    assert jaws[0] < 0.2 and jaws[3] < jaws[5] and jaws[-1] == pytest.approx(1.0, abs=1e-6)
    assert renderer.mode == "turn"
    assert renderer.yield_audio_data(b"\0\0", False) == "c1"


def test_only_the_last_frame_of_a_call_is_drawn(renderer, clock):
    drawn = renderer.stats.frames_drawn
    renderer.yield_frames_data([frame(0.2), frame(0.5), frame(0.9)], "c1")
    assert renderer.stats.frames_received == 3 and renderer.stats.frames_drawn == drawn + 1


def test_frames_that_do_not_decode_are_counted_and_skipped_never_raised(renderer, clock):
    bad = [b"\xff\xff", b"\x0a\x05ab", b"", b"\x32\xff\xff\xff\xff\x0f"]
    drawn = renderer.stats.frames_drawn
    renderer.yield_frames_data(bad, "c1")
    assert renderer.stats.decode_errors == 4 and renderer.stats.frames_drawn == drawn
    assert renderer.mode == "idle"
    renderer.yield_frames_data([b"\xff", frame(0.5), b"\xff"], "c1")
    assert renderer.stats.decode_errors == 6 and renderer.stats.frames_drawn == drawn + 1
    renderer.yield_frames_data([None, 42, "text"], "c1")  # not even bytes
    assert renderer.stats.decode_errors == 9


def test_js_typed_arrays_are_accepted(renderer):
    class Uint8Array:
        def __init__(self, data):
            self.data = data

        def to_bytes(self):
            return self.data

        def __len__(self):
            return len(self.data)

    renderer.yield_frames_data([Uint8Array(frame(0.5))], "c1")
    renderer.transition(Uint8Array(frame(0.5)))
    assert renderer.stats.decode_errors == 0 and renderer.stats.frames_received == 1


def test_yield_audio_data_returns_none_between_turns(renderer):
    assert renderer.yield_audio_data(b"\0\0", True) is None


def test_hooks_drive_the_blends(renderer, clock, browser):
    renderer.transition(frame(1.0))
    assert renderer.mode == "blend-in"
    renderer.transition(b"\xff")  # a bad TRANSITION body is counted, the blend goes on
    assert renderer.stats.decode_errors == 1
    renderer.turn_started("c1")
    for _ in range(10):
        clock.advance(40)
        renderer.yield_frames_data([frame(1.0)], "c1")
    assert renderer.mode == "turn"
    renderer.turn_ended("c1", "disconnect")
    assert renderer.mode == "blend-out"
    browser.tick(40, 12)
    assert renderer.mode == "idle" and renderer.stats.jaw < 0.1
    renderer.turn_started("c2")
    renderer.yield_frames_data([frame(1.0)], "c2")
    renderer.stalled()
    assert renderer.mode == "blend-out"
    snap = renderer.snapshot()
    assert snap["turns"] == 2 and snap["conversationId"] == "c2"


def test_the_idle_timer_draws_only_while_no_frames_come(renderer, browser, clock):
    before = renderer.stats.frames_drawn
    browser.tick(40, 25)
    assert renderer.stats.frames_drawn == before + 25
    for _ in range(10):  # frames drawn at the player's pace, the timer stays out of the way
        clock.advance(20)
        renderer.yield_frames_data([frame(0.5)], "c1")
        browser.tick(20)
    assert renderer.stats.frames_drawn == before + 25 + 10


def test_blinks_happen_in_idle(renderer, browser):
    blinks = []
    for _ in range(25 * 12):
        browser.tick(40)
        blinks.append(renderer.stats.blink)
    assert max(blinks) > 0.9 and blinks.count(0.0) > len(blinks) / 2


def test_close_stops_the_timer_and_destroys_its_proxy(browser, clock):
    r = FaceRenderer(FakeCanvas(), clock=clock)
    proxy = browser.proxies[-1]
    (timer_id,) = browser.intervals
    r.close()
    assert browser.cleared == [timer_id] and proxy.destroyed and not browser.intervals
    r.close()  # idempotent
    drawn = r.stats.frames_drawn
    r.yield_frames_data([frame(0.5)], "c1")
    r.draw()
    assert r.stats.frames_drawn == drawn


def test_stop_and_start_again(browser, clock):
    r = FaceRenderer(FakeCanvas(), clock=clock, autostart=False)
    assert not browser.intervals
    r.start()
    r.start()
    assert len(browser.intervals) == 1
    r.stop()
    assert not browser.intervals and browser.proxies[-1].destroyed
    r.start()
    assert len(browser.intervals) == 1
    r.close()


def test_a_failing_idle_draw_is_counted_not_raised(renderer, browser, monkeypatch):
    def boom(*args):
        raise RuntimeError("canvas gone")

    monkeypatch.setattr(renderer.painter, "paint", boom)
    browser.tick(40, 3)
    assert renderer.stats.draw_errors == 3
    assert renderer.painter.rec.ops == []  # no half frame left behind


def test_snapshot_is_json_ready_with_camel_case_names(renderer, clock):
    renderer.yield_frames_data([frame(0.5, lid=1.0), b"\xff"], "c1")
    snap = renderer.snapshot()
    json.dumps(snap)
    for key in ("framesDrawn", "framesReceived", "decodeErrors", "mode", "jaw", "blink", "turns",
                "conversationId", "costMsMean", "costMsLast", "costMsMax"):
        assert key in snap
    assert snap["mode"] == "blend-in" and snap["decodeErrors"] == 1 and snap["framesReceived"] == 2


# ------------------------------------------------------------------ packaging


@pytest.mark.processes  # a fresh interpreter in a subprocess
def test_import_avatarplayer_stays_light_and_exports_face_renderer_lazily():
    code = (
        "import sys, avatarplayer\n"
        "assert 'avatarplayer.face.canvas' not in sys.modules\n"
        "assert not [m for m in sys.modules if m.startswith('avatarplayer.face')], 'the face loads on first use'\n"
        "assert not any(m.startswith('google') for m in sys.modules)\n"
        "from avatarplayer import FaceRenderer\n"
        "assert FaceRenderer.__module__ == 'avatarplayer.face.canvas'\n"
        "assert 'FaceRenderer' in dir(avatarplayer) and 'FaceRenderer' in avatarplayer.__all__\n"
        "assert not any(m.startswith('google') for m in sys.modules), 'protobuf loads on first decode only'\n"
        "assert 'js' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.processes  # a fresh interpreter in a subprocess
def test_a_new_renderer_loads_the_frame_decoder_before_the_first_frame():
    """Importing protobuf and building the schema blocks Pyodide for about 0.3 s: done on the first
    frame of the first turn, it stalled the page while that turn's frames arrived, and the player
    dropped them (the demo's greeting lost its first 4 to 11 frames)."""
    code = (
        "import sys, pytest\n"
        "from avatarplayer import FaceRenderer\n"
        "from tests.renderer.fakes import Browser, FakeCanvas, FakeClock\n"
        "assert not any(m.startswith('google') for m in sys.modules)\n"
        "clock = FakeClock()\n"
        "Browser(pytest.MonkeyPatch(), clock)\n"
        "renderer = FaceRenderer(FakeCanvas(), clock=clock, seed=1)\n"
        "assert renderer.stats.frames_received == 0\n"
        "assert 'avatarplayer.wire.messages' in sys.modules, 'the decoder waits for the first frame'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_a_canvas_without_a_2d_context_is_refused(browser, clock):
    class WebGLCanvas(FakeCanvas):
        def getContext(self, kind):  # noqa: N802
            return None

    with pytest.raises(ValueError, match="2D context"):
        FaceRenderer(WebGLCanvas(), clock=clock)


def test_the_painter_and_the_recorder_are_still_importable_from_canvas():
    assert canvas.FacePainter is painter.FacePainter and canvas.STAGE is painter.STAGE
    assert canvas.CanvasRecorder is recorder.CanvasRecorder
    assert set(canvas.__all__) == {"FaceRenderer", "FacePainter", "CanvasRecorder", "STAGE"}
