// Evaluated by avatarplayer/face/canvas.py with pyodide's run_js (one expression: no trailing
// semicolon, no exports); loaded as avatarplayer.face.recorder.REPLAY_JS.
//
// The JavaScript half of avatarplayer/face/recorder.py's CanvasRecorder: given a 2D context, returns
// { addStyles(json), run(ops) }. addStyles takes the styles the recorder numbered (CSS colours,
// and radial gradients as ["radial", x0, y0, r0, x1, y1, r1, [[offset, colour], ...]]), made once
// here; run replays a Float64Array of ops on ctx, one case per op code (CanvasRecorder.OPS and
// ARITY), in one call per frame instead of ~250 Python->JS calls.
(ctx) => {
  const styles = [];
  return {
    addStyles(json) {
      for (const s of JSON.parse(json)) {
        if (typeof s === "string") { styles.push(s); continue; }
        const g = ctx.createRadialGradient(s[1], s[2], s[3], s[4], s[5], s[6]);
        for (const [offset, color] of s[7]) g.addColorStop(offset, color);
        styles.push(g);
      }
    },
    run(b) {
      const n = b.length;
      let i = 0;
      while (i < n) {
        switch (b[i++]) {
          case 0: ctx.beginPath(); break;
          case 1: ctx.moveTo(b[i], b[i + 1]); i += 2; break;
          case 2: ctx.lineTo(b[i], b[i + 1]); i += 2; break;
          case 3: ctx.quadraticCurveTo(b[i], b[i + 1], b[i + 2], b[i + 3]); i += 4; break;
          case 4: ctx.bezierCurveTo(b[i], b[i + 1], b[i + 2], b[i + 3], b[i + 4], b[i + 5]); i += 6; break;
          case 5: ctx.arc(b[i], b[i + 1], b[i + 2], b[i + 3], b[i + 4]); i += 5; break;
          case 6: ctx.ellipse(b[i], b[i + 1], b[i + 2], b[i + 3], b[i + 4], b[i + 5], b[i + 6]); i += 7; break;
          case 7: ctx.closePath(); break;
          case 8: ctx.fill(); break;
          case 9: ctx.stroke(); break;
          case 10: ctx.clip(); break;
          case 11: ctx.save(); break;
          case 12: ctx.restore(); break;
          case 13: ctx.translate(b[i], b[i + 1]); i += 2; break;
          case 14: ctx.rotate(b[i]); i += 1; break;
          case 15: ctx.setTransform(b[i], b[i + 1], b[i + 2], b[i + 3], b[i + 4], b[i + 5]); i += 6; break;
          case 16: ctx.fillRect(b[i], b[i + 1], b[i + 2], b[i + 3]); i += 4; break;
          case 17: ctx.clearRect(b[i], b[i + 1], b[i + 2], b[i + 3]); i += 4; break;
          case 18: ctx.fillStyle = styles[b[i]]; i += 1; break;
          case 19: ctx.strokeStyle = styles[b[i]]; i += 1; break;
          case 20: ctx.lineWidth = b[i]; i += 1; break;
          default: throw new Error("face renderer: bad canvas op " + b[i - 1] + " at " + (i - 1));
        }
      }
    },
  };
}
