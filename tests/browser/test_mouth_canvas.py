"""The mouth shapes of phonemes on a real canvas: "moon" and "mean" synthesized by espeak-ng, their
frames made by the avatar worker, decoded and drawn by the reference face (the recorded calls
replayed by its JavaScript on Chromium's 2D canvas), then measured in pixels at the vowel."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor

from avatar_worker.modes.speech import plan_speech_turn, speak
from avatar_worker.motion_gen import MotionGenerator
from avatarplayer.face.model import FacePose, pose_from_message
from avatarplayer.face.painter import FacePainter
from avatarplayer.face.recorder import REPLAY_JS, CanvasRecorder
from avatarplayer.wire.motion import decode_packet

SIZE = 400

DRAW_AND_MEASURE = """([body, ops, styles, size]) => {
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = size;
  document.body.append(canvas);
  const ctx = canvas.getContext("2d");
  const replay = (0, eval)(body)(ctx);
  replay.addStyles(styles);
  replay.run(Float64Array.from(ops));
  // the lips: strongly red, darker than the skin and its blush; in the lower half of the face
  const px = ctx.getImageData(0, 0, size, size).data;
  let x0 = size, x1 = -1, y0 = size, y1 = -1, n = 0;
  for (let y = Math.round(size * 0.5); y < Math.round(size * 0.8); y++) {
    for (let x = 0; x < size; x++) {
      const i = 4 * (y * size + x), r = px[i], g = px[i + 1];
      if (r - g > 85 && g < 125 && r > 150) {
        n++; x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y);
      }
    }
  }
  return {pixels: n, width: x1 - x0 + 1, height: y1 - y0 + 1, png: canvas.toDataURL()};
}"""


def vowel_pose(word: str) -> FacePose:
    speech = speak(word)
    vowel = speech.phonemes[1]
    with ThreadPoolExecutor(1) as pool:  # Playwright's sync API keeps a loop running in this thread
        turn = pool.submit(asyncio.run, plan_speech_turn(speech, MotionGenerator(7), 0)).result()
    poses = [pose_from_message(decode_packet(e.packet).message)
             for tick in turn.ticks for e in tick.emissions if e.kind == "frame"]
    return poses[int((vowel.start_ms + vowel.end_ms) / 2 // 40)]


def drawn_lips(page, pose: FacePose) -> dict:
    rec = CanvasRecorder()
    FacePainter(SIZE, SIZE, recorder=rec).paint(pose)
    ops, styles = rec.take()
    return page.evaluate(DRAW_AND_MEASURE, [REPLAY_JS, list(ops), json.dumps(styles), SIZE])


def test_moon_and_mean_have_different_mouths_at_the_vowel(browser_page, tmp_path):
    page = browser_page
    page.set_content("<!doctype html><body style='margin:0'></body>")
    moon, mean = drawn_lips(page, vowel_pose("moon")), drawn_lips(page, vowel_pose("mean"))
    rest = drawn_lips(page, FacePose())
    for name, lips in (("moon", moon), ("mean", mean), ("rest", rest)):
        (tmp_path / f"{name}.png").write_text(lips.pop("png"))  # data: URLs, to look at by hand
    print(f"\nlips in pixels: moon {moon}, mean {mean}, at rest {rest}")
    assert min(moon["pixels"], mean["pixels"], rest["pixels"]) > 150, (moon, mean, rest)
    # "moon": rounded lips, narrower than at rest and much narrower than the spread "mean"
    assert moon["width"] < 0.85 * rest["width"] < 0.85 * mean["width"], (moon, mean, rest)
    assert moon["width"] < 0.7 * mean["width"], (moon, mean)
    # ... and rounder: taller for their width
    assert moon["height"] / moon["width"] > 1.5 * mean["height"] / mean["width"], (moon, mean)
