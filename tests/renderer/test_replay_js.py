"""REPLAY_JS (avatarplayer/face/js/replay.js), the JavaScript half of the recorder, run for real under
node with a recording 2D context: it must make exactly the calls CanvasRecorder.calls() decodes,
styles included."""

import json
import shutil
import subprocess

import pytest

from avatarplayer.face.model import FacePose
from avatarplayer.face.painter import FacePainter
from avatarplayer.face.recorder import REPLAY_JS, CanvasRecorder

SCRIPT = r"""
const [body, stylesJson, ops] = JSON.parse(require("fs").readFileSync(0, "utf8"));
const calls = [];
const gradients = [];
const ctx = new Proxy({}, {
  get(target, name) {
    if (name === "createRadialGradient") return (...a) => {
      const g = { id: "gradient" + gradients.length, args: a, stops: [], addColorStop(o, c) { this.stops.push([o, c]); } };
      gradients.push(g);
      return g;
    };
    return (...a) => calls.push([name, a]);
  },
  set(target, name, value) {
    calls.push([name, [typeof value === "object" ? ["radial", ...value.args, value.stops] : value]]);
    return true;
  },
});
const replay = (0, eval)(body)(ctx);  // as pyodide's run_js: one expression, evaluated globally
replay.addStyles(stylesJson);
replay.run(Float64Array.from(ops));
let error = null;
try { replay.run(Float64Array.from([99])); } catch (e) { error = String(e.message); }
process.stdout.write(JSON.stringify({ calls, error }));
"""


def run_node(ops, styles):
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is missing: `python3 tools/bootstrap.py core` installs it", pytrace=False)
    payload = json.dumps([REPLAY_JS, json.dumps(styles), list(ops)])
    out = subprocess.run([node, "-e", SCRIPT], input=payload, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.processes  # runs node
@pytest.mark.parametrize("pose", [FacePose(), FacePose(jaw=0.8, blink_left=0.5, yaw=0.3, roll=-0.2, smile=0.5)])
def test_the_javascript_replays_exactly_the_recorded_calls(pose):
    rec = CanvasRecorder()
    painter = FacePainter(480, 360, recorder=rec)
    painter.paint(pose)
    expected = rec.calls()
    ops, styles = rec.take()
    result = run_node(ops, styles)
    got = [(name, tuple(args)) for name, args in result["calls"]]
    assert len(got) == len(expected)
    for (gname, gargs), (ename, eargs) in zip(got, expected):
        assert gname == ename
        if ename in ("fillStyle", "strokeStyle") and isinstance(eargs[0], tuple):
            assert json.loads(json.dumps(eargs[0])) == list(gargs[0])  # a gradient, made from its spec
        else:
            assert gargs == pytest.approx(eargs)
    assert "bad canvas op 99" in result["error"]


def test_every_op_has_a_case_with_its_arity():
    for code, (name, arity) in enumerate(zip(CanvasRecorder.OPS, CanvasRecorder.ARITY)):
        line = next(line for line in REPLAY_JS.splitlines() if line.strip().startswith(f"case {code}:"))
        assert f"ctx.{name}" in line
        assert (f"i += {arity};" in line) == (arity > 0)
