// Minimal canvas plots for the dashboard: raster, time series, x-y trajectory, bar histogram.
// Hand-written so the page needs no build step and no third-party code.
"use strict";

const Plot = (() => {
  const PAD = { l: 46, r: 46, t: 8, b: 22 };
  const GRID = "#2a3440", TEXT = "#8593a3";

  function begin(canvas) {
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.font = "11px system-ui, sans-serif";
    const box = { x: PAD.l, y: PAD.t, w: canvas.width - PAD.l - PAD.r,
                  h: canvas.height - PAD.t - PAD.b };
    ctx.strokeStyle = GRID;
    ctx.strokeRect(box.x, box.y, box.w, box.h);
    return [ctx, box];
  }

  function fmt(v) {
    const a = Math.abs(v);
    if (a !== 0 && (a < 0.01 || a >= 1e4)) return v.toExponential(1);
    return a >= 100 ? v.toFixed(0) : a >= 1 ? v.toFixed(1) : v.toFixed(2);
  }

  function range(arrays, fallback) {
    let lo = Infinity, hi = -Infinity;
    for (const a of arrays) for (const v of a) { if (v < lo) lo = v; if (v > hi) hi = v; }
    if (!isFinite(lo)) return fallback;
    if (hi - lo < 1e-9) { lo -= 0.5; hi += 0.5; }
    const m = (hi - lo) * 0.05;
    return [lo - m, hi + m];
  }

  function label(ctx, text, x, y, align = "left", color = TEXT) {
    ctx.fillStyle = color; ctx.textAlign = align; ctx.fillText(text, x, y);
  }

  function yTicks(ctx, box, [lo, hi], side, color = TEXT) {
    for (let i = 0; i <= 4; i++) {
      const v = lo + (hi - lo) * i / 4, y = box.y + box.h - box.h * i / 4;
      const x = side === "left" ? box.x - 4 : box.x + box.w + 4;
      label(ctx, fmt(v), x, y + 4, side === "left" ? "right" : "left", color);
    }
  }

  function xTimeTicks(ctx, box, [t0, t1]) {
    for (let i = 0; i <= 5; i++) {
      const x = box.x + box.w * i / 5;
      label(ctx, (t0 + (t1 - t0) * i / 5 - t1).toFixed(1) + " s", x, box.y + box.h + 15, "center");
    }
  }

  /** Dots at (time, channel). ts in seconds, chans ints; the window ends at tEnd. */
  function raster(canvas, ts, chans, channels, windowS, tEnd) {
    const [ctx, box] = begin(canvas);
    const n = Math.max(1, channels), t0 = tEnd - windowS;
    ctx.fillStyle = "#e0e6ee";
    const dh = Math.max(1, box.h / n - 0.5);
    let drawn = 0;
    for (let i = 0; i < ts.length; i++) {
      if (ts[i] < t0) continue;
      const x = box.x + (ts[i] - t0) / windowS * box.w;
      const y = box.y + box.h - (chans[i] + 1) * box.h / n;
      ctx.fillRect(x, y, 1.5, dh);
      drawn++;
    }
    label(ctx, "ch 0", box.x - 4, box.y + box.h, "right");
    label(ctx, "ch " + (n - 1), box.x - 4, box.y + 10, "right");
    xTimeTicks(ctx, box, [t0, tEnd]);
    return drawn;
  }

  /** Time series on a shared time axis; each series {t, v, color, axis: "left"|"right"}. */
  function series(canvas, list, windowS, tEnd) {
    const [ctx, box] = begin(canvas);
    const t0 = tEnd - windowS;
    for (const axis of ["left", "right"]) {
      const mine = list.filter((s) => s.axis === axis);
      if (!mine.length) continue;
      const r = range(mine.map((s) => s.v), [0, 1]);
      yTicks(ctx, box, r, axis, mine[0].color);
      for (const s of mine) {
        ctx.strokeStyle = s.color; ctx.lineWidth = 1.5; ctx.beginPath();
        let prevY = null;
        for (let i = 0; i < s.t.length; i++) {
          if (s.t[i] < t0) continue;
          const x = box.x + (s.t[i] - t0) / windowS * box.w;
          const y = box.y + box.h - (s.v[i] - r[0]) / (r[1] - r[0]) * box.h;
          if (prevY === null) ctx.moveTo(x, y);
          else { if (s.step) ctx.lineTo(x, prevY); ctx.lineTo(x, y); }
          prevY = y;
        }
        if (s.step && prevY !== null) ctx.lineTo(box.x + box.w, prevY);
        ctx.stroke();
      }
    }
    xTimeTicks(ctx, box, [t0, tEnd]);
  }

  /** Trajectories in the plane; each {x, y, color}; equal scales on both axes. */
  function xy(canvas, list) {
    const [ctx, box] = begin(canvas);
    let [xl, xh] = range(list.map((s) => s.x), [-1, 1]);
    let [yl, yh] = range(list.map((s) => s.y), [-1, 1]);
    const scale = Math.min(box.w / (xh - xl), box.h / (yh - yl));
    const cx = (xl + xh) / 2, cy = (yl + yh) / 2;
    xl = cx - box.w / scale / 2; xh = cx + box.w / scale / 2;
    yl = cy - box.h / scale / 2; yh = cy + box.h / scale / 2;
    for (const s of list) {
      ctx.strokeStyle = s.color; ctx.lineWidth = 1.5; ctx.beginPath();
      for (let i = 0; i < s.x.length; i++) {
        const px = box.x + (s.x[i] - xl) * scale, py = box.y + box.h - (s.y[i] - yl) * scale;
        i ? ctx.lineTo(px, py) : ctx.moveTo(px, py);
      }
      ctx.stroke();
      if (s.x.length) {
        const i = s.x.length - 1;
        ctx.fillStyle = s.color; ctx.beginPath();
        ctx.arc(box.x + (s.x[i] - xl) * scale, box.y + box.h - (s.y[i] - yl) * scale, 4, 0, 7);
        ctx.fill();
      }
    }
    yTicks(ctx, box, [yl, yh], "left");
    for (let i = 0; i <= 4; i++) {
      label(ctx, fmt(xl + (xh - xl) * i / 4), box.x + box.w * i / 4, box.y + box.h + 15, "center");
    }
  }

  /** Histogram bars with their bucket labels; counts may be empty. */
  function bars(canvas, labels, counts, color) {
    const [ctx, box] = begin(canvas);
    const max = Math.max(1, ...counts), n = Math.max(1, counts.length), w = box.w / n;
    ctx.fillStyle = color;
    counts.forEach((c, i) => {
      const h = c / max * box.h;
      ctx.fillRect(box.x + i * w + 1, box.y + box.h - h, w - 2, h);
    });
    labels.forEach((l, i) => {
      if (n > 10 && i % 2) return;
      label(ctx, l, box.x + i * w + w / 2, box.y + box.h + 15, "center");
    });
    yTicks(ctx, box, [0, max], "left");
  }

  return { raster, series, xy, bars };
})();
