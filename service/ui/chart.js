// chart.js - a line chart of rates on a canvas, by hand: events/s and
// deliveries/s over the last minutes, from the counters of GET /stats.

export class RateChart {
  // canvas: the element; series: [{label, color}]; keep: points kept.
  constructor(canvas, series, keep = 300) {
    this.canvas = canvas;
    this.series = series.map((s) => ({...s, points: []}));
    this.keep = keep;
    this.last = null; // {t, values} of the previous sample
    new ResizeObserver(() => this.draw()).observe(canvas);
  }

  // Counters (monotonic) read at wall time t (ms; where the point is
  // drawn) and at the server's monotonic mono (ms; the rate's interval,
  // t's when absent): each series gets the rate since the previous sample.
  // A counter that went down (a restart) starts over; so does a sample
  // from other sources than the previous one (from: any string, e.g. the
  // instances summed).
  sample(t, values, mono, from = '') {
    const m = Number.isFinite(mono) ? mono : t;
    if (this.last && m > this.last.m && from === this.last.from) {
      const dt = (m - this.last.m) / 1000;
      this.series.forEach((s, i) => {
        const d = values[i] - this.last.values[i];
        s.points.push({t, v: d >= 0 ? d / dt : 0});
        if (s.points.length > this.keep) s.points.shift();
      });
    }
    this.last = {t, m, values, from};
    // The latest rates, for a reader that cannot see the pixels (tests).
    this.canvas.dataset.rates = this.series.map((s, i) =>
      this.latest(i).toFixed(2)).join(' ');
    this.draw();
  }

  latest(i) {
    const p = this.series[i].points;
    return p.length ? p[p.length - 1].v : 0;
  }

  draw() {
    const c = this.canvas, dpr = window.devicePixelRatio || 1;
    const w = c.clientWidth, hgt = c.clientHeight;
    if (!w || !hgt) return;
    if (c.width !== Math.round(w * dpr) || c.height !== Math.round(hgt * dpr)) {
      c.width = Math.round(w * dpr);
      c.height = Math.round(hgt * dpr);
    }
    const g = c.getContext('2d');
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, hgt);
    const style = getComputedStyle(c);
    const ink = style.color || '#333';
    const left = 44, right = 8, top = 22, bottom = 18;
    const pw = w - left - right, ph = hgt - top - bottom;
    // The window: what has been seen, from one minute up to all kept (a
    // fresh page does not draw a few seconds into a corner).
    const now = Date.now(), first = this.series[0].points[0];
    const span = Math.min(this.keep * 1000,
      Math.max(60000, first ? now - first.t : 0));
    let max = 1;
    for (const s of this.series)
      for (const p of s.points) max = Math.max(max, p.v);
    max = niceCeil(max);

    g.font = '11px system-ui, sans-serif';
    g.fillStyle = ink;
    g.strokeStyle = 'rgba(128,128,128,0.3)';
    g.lineWidth = 1;
    g.textBaseline = 'middle';
    for (let k = 0; k <= 4; k++) {
      const y = top + ph - (ph * k) / 4;
      g.beginPath();
      g.moveTo(left, y);
      g.lineTo(left + pw, y);
      g.stroke();
      g.textAlign = 'right';
      g.fillText(fmt((max * k) / 4), left - 4, y);
    }
    g.textAlign = 'left';
    g.fillText(span >= 120000 ? `-${Math.round(span / 60000)} min`
      : `-${Math.round(span / 1000)} s`, left, top + ph + 10);
    g.textAlign = 'right';
    g.fillText('now', left + pw, top + ph + 10);

    let lx = left;
    this.series.forEach((s, i) => {
      g.strokeStyle = s.color;
      g.lineWidth = 2;
      g.beginPath();
      s.points.forEach((p, j) => {
        const x = left + pw - ((now - p.t) / span) * pw;
        const y = top + ph - (p.v / max) * ph;
        if (j === 0) g.moveTo(Math.max(left, x), y);
        else g.lineTo(Math.max(left, x), y);
      });
      g.stroke();
      g.fillStyle = s.color;
      g.fillRect(lx, 6, 10, 10);
      g.fillStyle = ink;
      g.textAlign = 'left';
      const label = `${s.label} ${fmt(this.latest(i))}/s`;
      g.fillText(label, lx + 14, 11);
      lx += g.measureText(label).width + 30;
    });
  }
}

function niceCeil(v) {
  const e = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (v <= m * e) return m * e;
  return 10 * e;
}

function fmt(v) {
  if (v >= 1e6) return (v / 1e6).toFixed(1) + 'M';
  if (v >= 1e3) return (v / 1e3).toFixed(1) + 'k';
  return v >= 10 || v === 0 ? String(Math.round(v)) : v.toFixed(1);
}
