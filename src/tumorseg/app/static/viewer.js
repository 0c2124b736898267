// The canvas views: drawing, window/level, colour bar, orientation, zoom/pan about the pointer, crosshair readout.
import { hasReference, markReferenceStale, runCompare } from "./reference.js";
import { $, api, currentThreshold, decodePng, fileIndex, showError, state } from "./state.js";

// what the viewer asks of the study module, handed in by main.js (so viewer.js never imports study.js)


export const CANVASES = ["orig", "seq1", "seq2", "ai"]; // the canvas views' panels (seq1/seq2: the sequences layout)
export const FLOOR = 13; // probability 0.05 in 8-bit: below it the heatmap stays transparent
// The server's JET colours (render.jet, GET /api/colormap): the page re-renders instantly with the CLI's colours.
export const JET = [];
export function setColormap(lut) { JET.splice(0, JET.length, ...lut); }

export function currentMode() { return document.querySelector("input[name=mode]:checked").value; }

export function render() {
  const it = state.items[state.index];
  if (!it) return;
  const thr = currentThreshold();
  const alpha = parseFloat($("opacity").value);
  const t = Math.round(thr * 255);
  $("threshold-val").textContent = thr.toFixed(2);
  $("opacity-val").textContent = alpha.toFixed(2);
  $("slice-val").textContent = `${state.index + 1} / ${state.items.length}`;
  const { width: w, height: h } = it;
  for (const id of CANVASES) { const c = $(id); if (c.width !== w || c.height !== h) { c.width = w; c.height = h; } }
  if (state.wlAuto) autoWindow(it);
  const lut = wlLut();
  const base = new ImageData(w, h);
  const bsrc = it.image.data, bd = base.data, seq = state.seq;
  for (let o = 0; o < bsrc.length; o += 4) {
    if (seq < 0) { bd[o] = lut[bsrc[o]]; bd[o + 1] = lut[bsrc[o + 1]]; bd[o + 2] = lut[bsrc[o + 2]]; }
    else { bd[o] = bd[o + 1] = bd[o + 2] = lut[bsrc[o + seq]]; }
    bd[o + 3] = 255;
  }
  const bySequence = state.layout === "sequences";
  $("left-caption").textContent = bySequence ? "Pre-contrast" : "Original";
  if (bySequence) {
    // one canvas per sequence, each through the same window; the AI panel keeps the chosen sequence
    ["orig", "seq1", "seq2"].forEach((id, ch) => {
      const im = new ImageData(w, h), dd = im.data;
      for (let o = 0; o < bsrc.length; o += 4) { dd[o] = dd[o + 1] = dd[o + 2] = lut[bsrc[o + ch]]; dd[o + 3] = 255; }
      $(id).getContext("2d").putImageData(im, 0, 0);
    });
  } else {
    $("orig").getContext("2d").putImageData(base, 0, 0);
  }
  $("window").value = String(Math.round(state.win)); $("level").value = String(Math.round(state.lev));
  // W/L in the input's own units (NIfTI values, DICOM after rescale) for one sequence; display units otherwise
  const units = state.study && state.study.geometry && state.study.geometry.units;
  if (units && seq >= 0) {
    const [m, b] = units[seq], f = (v) => (Math.abs(v) >= 100 ? v.toFixed(0) : v.toPrecision(3));
    $("window-val").textContent = f(state.win * m); $("level-val").textContent = f(state.lev * m + b);
    $("window-val").title = $("level-val").title = "in the input's own units";
  } else {
    $("window-val").textContent = String(Math.round(state.win)); $("level-val").textContent = String(Math.round(state.lev));
    $("window-val").title = $("level-val").title = "display units (0-255)";
  }
  drawColorbar(thr);
  showOrientation();
  markReferenceStale(thr);

  const out = new ImageData(w, h);
  const src = bd, dst = out.data, p = it.prob;
  const mode = currentMode();
  const off = officialFor(it, thr);
  if (!off) scheduleSync();
  const m = off ? off.mask : null;
  let count = 0;
  for (let i = 0; i < w * h; i++) {
    const o = 4 * i, on = m ? m[i] > 0 : p[i] >= t;
    if (on) count++;
    let r = src[o], g = src[o + 1], b = src[o + 2];
    if (mode === "heatmap" && p[i] >= FLOOR) {
      // above the threshold at full opacity; the uncertain band below it faintly
      const col = JET[p[i]], a = on ? alpha : alpha * 0.35;
      r = r * (1 - a) + col[0] * a; g = g * (1 - a) + col[1] * a; b = b * (1 - a) + col[2] * a;
    } else if (mode === "mask") {
      const v = on ? 255 : 0; r = g = b = v;
    } else if (mode === "contour" && on) {
      const x = i % w, y = (i - x) / w;
      const inside = (j) => (m ? m[j] > 0 : p[j] >= t);
      const edge = x === 0 || y === 0 || x === w - 1 || y === h - 1 || !inside(i - 1) || !inside(i + 1) || !inside(i - w) || !inside(i + w);
      if (edge) { r = r * (1 - Math.max(alpha, 0.6)) + 255 * Math.max(alpha, 0.6); g = g * (1 - Math.max(alpha, 0.6)) + 255 * Math.max(alpha, 0.6); b = b * (1 - Math.max(alpha, 0.6)); }
    }
    dst[o] = r; dst[o + 1] = g; dst[o + 2] = b; dst[o + 3] = 255;
  }
  const ref = state.ref && state.ref.masks[state.study ? it.slice : 0];
  if (ref && ref.length === w * h) {
    for (let i = 0; i < w * h; i++) {
      if (!ref[i]) continue;
      const x = i % w, y = (i - x) / w;
      if (x === 0 || y === 0 || x === w - 1 || y === h - 1 || !ref[i - 1] || !ref[i + 1] || !ref[i - w] || !ref[i + w]) {
        const o = 4 * i; dst[o] = 0; dst[o + 1] = 255; dst[o + 2] = 255;
      }
    }
  }
  $("ai").getContext("2d").putImageData(out, 0, 0);
  $("right-caption").textContent = { heatmap: "AI heatmap (JET; faint below the threshold)", contour: "AI contour", mask: "AI binary mask" }[mode];

  $("s-file").textContent = it.name;
  let area = `${count.toLocaleString()} px`;
  if (it.spacing) area += ` · ${(count * it.spacing[1] * it.spacing[2]).toFixed(1)} mm²`;
  $("s-area").textContent = off ? area : `${area} (updating…)`;
  $("s-area").dataset.official = off ? "1" : "0";
  $("s-max").textContent = it.max.toFixed(3);
  if (state.study) {
    $("s-study-row").hidden = false;
    const ms = off && off.measurements ? off.measurements : null;
    if (ms) {
      const vox = ms.tumour_voxels;
      let txt = ms.volume_ml !== null ? `${ms.volume_ml.toFixed(2)} mL (${vox.toLocaleString()} voxels)` : `${vox.toLocaleString()} voxels (no spacing in file)`;
      txt += ` · ${ms.slices_with_tumour} slices with tumour`;
      if (ms.largest_diameter_mm !== null && ms.largest_diameter_mm !== undefined) txt += ` · largest diameter ${ms.largest_diameter_mm.toFixed(1)} mm`;
      $("s-volume").textContent = `${state.study.source || ""}: ${txt}`;
      $("s-volume").title = $("s-volume").textContent;
    } else {
      $("s-volume").textContent = "updating…";
    }
    $("s-volume").dataset.official = ms ? "1" : "0";
    const notes = (ms || state.study).notes || [];
    $("s-notes-row").hidden = !notes.length;
    $("s-notes").textContent = notes.join(" ");
  } else {
    $("s-study-row").hidden = true;
    const w = it.warnings || [];
    $("s-notes-row").hidden = !w.length;
    $("s-notes").textContent = w.join(" ");
  }
  $("ai").dataset.rendered = String(Date.now());
}

export function officialKey(it, thr) { return `${it.resultId}:${it.slice}:${thr.toFixed(4)}`; }

export function officialFor(it, thr) {
  const o = state.official;
  return o && o.key === officialKey(it, thr) ? o : null;
}

export function scheduleSync() {
  clearTimeout(state.syncTimer);
  state.syncTimer = setTimeout(syncMask, 120);
}

// The server's mask for the current slice and threshold: the one post-processing rule.
export async function syncMask() {
  const it = state.items[state.index];
  if (!it || !it.resultId) return;
  const thr = currentThreshold();
  const key = officialKey(it, thr);
  const fd = new FormData();
  fd.append("result_id", it.resultId);
  fd.append("threshold", String(thr));
  fd.append("slice", String(it.slice));
  try {
    const r = await api("/api/mask", { method: "POST", body: fd });
    const rgba = await decodePng(r.mask_png);
    const mask = new Uint8Array(rgba.width * rgba.height);
    for (let i = 0; i < mask.length; i++) mask[i] = rgba.data[4 * i];
    const cur = state.items[state.index];
    if (!cur || officialKey(cur, currentThreshold()) !== key) return; // moved on meanwhile
    state.official = { key, mask, pixels: r.tumour_pixels, measurements: r.measurements || null };
    render();
    if (hasReference() && state.ref && Math.abs(state.ref.threshold - thr) > 1e-9) { if (await runCompare()) render(); }
  } catch (e) {
    showError([e.message]);
  }
}

// ---- display: window/level, sequence, colour bar, orientation, zoom/pan, crosshair

export function wlLut() {
  const lut = new Uint8ClampedArray(256), lo = state.lev - state.win / 2;
  for (let v = 0; v < 256; v++) lut[v] = ((v - lo) / state.win) * 255;
  return lut;
}

// Automatic window: the 1st-99th percentiles of the displayed channel(s), background excluded.
export function autoWindow(it) {
  const hist = new Uint32Array(256), d = it.image.data;
  let n = 0;
  for (let o = 0; o < d.length; o += 4) {
    const vals = state.seq < 0 ? [d[o], d[o + 1], d[o + 2]] : [d[o + state.seq]];
    for (const v of vals) if (v > 0) { hist[v]++; n++; }
  }
  if (!n) { state.win = 255; state.lev = 128; return; }
  let acc = 0, p1 = 0, p99 = 255;
  for (let v = 0; v < 256; v++) { acc += hist[v]; if (acc >= 0.01 * n) { p1 = v; break; } }
  acc = 0;
  for (let v = 0; v < 256; v++) { acc += hist[v]; if (acc >= 0.99 * n) { p99 = v; break; } }
  state.win = Math.max(1, p99 - p1);
  state.lev = (p1 + p99) / 2;
}

export function drawColorbar(thr) {
  const c = $("colorbar"), ctx = c.getContext("2d"), img = ctx.createImageData(c.width, c.height);
  for (let x = 0; x < c.width; x++) {
    const col = JET[Math.round((x / (c.width - 1)) * 255)];
    for (let y = 0; y < c.height; y++) { const o = 4 * (y * c.width + x); img.data[o] = col[0]; img.data[o + 1] = col[1]; img.data[o + 2] = col[2]; img.data[o + 3] = 255; }
  }
  ctx.putImageData(img, 0, 0);
  const tx = Math.round(thr * (c.width - 1));
  ctx.fillStyle = "#fff"; ctx.fillRect(tx - 1, 0, 3, c.height);
  ctx.fillStyle = "#000"; ctx.fillRect(tx, 0, 1, c.height);
  c.dataset.threshold = thr.toFixed(2);
  c.title = `probability 0 (blue) to 1 (red); threshold ${thr.toFixed(2)} marked`;
}

// A canvas's picture turned as the screen shows it (transpose, then flip: display.turned on the server), so a
// download is the picture on screen, never the storage order.
export function turnedCanvas(src) {
  const t = turn();
  const w = t.transpose ? src.height : src.width, h = t.transpose ? src.width : src.height;
  const c = document.createElement("canvas");
  c.width = w; c.height = h;
  const ctx = c.getContext("2d");
  ctx.translate(t.flip_x ? w : 0, t.flip_y ? h : 0);
  ctx.scale(t.flip_x ? -1 : 1, t.flip_y ? -1 : 1);
  if (t.transpose) ctx.transform(0, 1, 1, 0, 0, 0);
  ctx.drawImage(src, 0, 0);
  return c;
}

// How the current study's slice is turned on screen (display.py decides; identity for 2D images).
export function turn() {
  const g = state.study && state.study.geometry;
  return g ? g[state.convention] : { transpose: false, flip_x: false, flip_y: false, labels: null, known: false };
}

export function showOrientation() {
  const t = turn();
  const o = t.known ? t.labels : null;
  const el = $("orientation");
  for (const side of ["top", "left", "right", "bottom"]) el.querySelector(`.o-${side}`).textContent = o ? o[side] : "";
  el.querySelector(".o-unknown").hidden = !!o || !state.items.length;
  el.querySelector(".o-unknown").textContent = state.study ? "orientation unknown (slice images carry none): shown as stored" : "orientation unknown";
  el.dataset.known = o ? "1" : "0";
  el.dataset.convention = state.convention;
}

export function applyZoom() {
  if (!(state.drag && state.drag.mode === "ruler")) clearRuler();
  const d = turn();
  const turnCss = `${d.flip_x || d.flip_y ? `scale(${d.flip_x ? -1 : 1}, ${d.flip_y ? -1 : 1}) ` : ""}${d.transpose ? "matrix(0, 1, 1, 0, 0, 0)" : ""}`;
  const t = `translate(${state.panX}px, ${state.panY}px) scale(${state.zoom}) ${turnCss}`;
  for (const id of CANVASES) $(id).style.transform = t;
  $("zoom").value = String(state.zoom);
  $("zoom-val").textContent = `${state.zoom.toFixed(1)}×`;
  $("orig").dataset.zoom = $("ai").dataset.zoom = state.zoom.toFixed(2);
}

export function setZoom(z, about) {
  const old = state.zoom;
  state.zoom = Math.max(1, Math.min(6, z));
  if (about && old !== state.zoom) {
    // keep the point under the pointer where it is: pan relative to the frame's centre
    const fr = $("frame-orig").getBoundingClientRect();
    const cx = about.clientX - (fr.left + fr.width / 2), cy = about.clientY - (fr.top + fr.height / 2);
    const k = state.zoom / old;
    state.panX = cx - (cx - state.panX) * k;
    state.panY = cy - (cy - state.panY) * k;
  }
  if (state.zoom === 1) { state.panX = 0; state.panY = 0; }
  applyZoom();
}

// Pointer -> image pixel, through the canvas's on-screen box (zoom and pan included).
// Pointer -> image pixel, through the canvas's on-screen box (zoom, pan and the study's turn included):
// (dx, dy) on screen, (x, y) in the stored slice.
export function pixelAt(canvas, e) {
  const r = canvas.getBoundingClientRect(), it = state.items[state.index];
  if (!it) return null;
  const t = turn();
  const W = t.transpose ? it.height : it.width, H = t.transpose ? it.width : it.height;
  const s = Math.min(r.width / W, r.height / H); // object-fit: contain
  const ox = r.left + (r.width - W * s) / 2, oy = r.top + (r.height - H * s) / 2;
  const dx = Math.floor((e.clientX - ox) / s), dy = Math.floor((e.clientY - oy) / s);
  if (dx < 0 || dy < 0 || dx >= W || dy >= H) return null;
  const ux = t.flip_x ? W - 1 - dx : dx, uy = t.flip_y ? H - 1 - dy : dy;
  const [x, y] = t.transpose ? [uy, ux] : [ux, uy];
  return { x, y, dx, dy, s, ox, oy };
}

export function onPointer(e) {
  const it = state.items[state.index];
  if (!it) return;
  state.lastPointer = { clientX: e.clientX, clientY: e.clientY, currentTarget: e.currentTarget };
  const pt = pixelAt(e.currentTarget.querySelector("canvas"), e);
  for (const id of CANVASES.map((c) => `frame-${c}`)) {
    const fr = $(id), mark = fr.querySelector(".cross");
    if (!pt) { mark.hidden = true; continue; }
    const fb = fr.getBoundingClientRect();
    mark.hidden = false;
    mark.style.left = `${pt.ox - fb.left + (pt.dx + 0.5) * pt.s}px`;
    mark.style.top = `${pt.oy - fb.top + (pt.dy + 0.5) * pt.s}px`;
  }
  if (!pt) return;
  const prob = it.prob[pt.y * it.width + pt.x] / 255;
  const g = state.study && state.study.geometry;
  let pos;
  if (g) {
    // patient coordinates from the study's affine (display.py): RAS+ mm, and the voxel (column, row, slice)
    const a = g.affine, v = [pt.x, pt.y, state.index, 1];
    const mm = [0, 1, 2].map((i) => a[i][0] * v[0] + a[i][1] * v[1] + a[i][2] * v[2] + a[i][3]);
    const ijk = fileIndex(g, mm) || [pt.x, pt.y, state.index];
    pos = `RAS ${mm.map((x) => x.toFixed(1)).join(", ")} mm${g.known ? "" : " (geometry assumed)"} · voxel ${ijk.join(", ")} (i, j, k in the file)`;
    $("readout").dataset.ras = mm.map((x) => x.toFixed(2)).join(",");
    $("readout").dataset.voxel = ijk.join(",");
  } else {
    const sp = it.spacing;
    pos = `x ${pt.x}, y ${pt.y} px` + (sp ? ` · ${(pt.x * sp[2]).toFixed(1)}, ${(pt.y * sp[1]).toFixed(1)} mm` : "");
  }
  $("readout").textContent = `${pos} · probability ${prob.toFixed(2)}`;
  $("readout").dataset.prob = prob.toFixed(3);
}

export function initViewer() {
  for (const id of ["window", "level"]) $(id).addEventListener("input", () => {
    state.wlAuto = false; state.win = parseFloat($("window").value); state.lev = parseFloat($("level").value); render();
  });
  $("wl-auto").addEventListener("click", () => { state.wlAuto = true; render(); });
  $("wl-full").addEventListener("click", () => { state.wlAuto = false; state.win = 255; state.lev = 127.5; render(); });
  $("zoom").addEventListener("input", (e) => setZoom(parseFloat(e.target.value)));
  for (const id of CANVASES.map((c) => `frame-${c}`)) {
    const fr = $(id);
    fr.addEventListener("mousemove", (e) => {
      const d = state.drag;
      if (d && d.mode === "pan") { state.panX = d.px + e.clientX - d.x; state.panY = d.py + e.clientY - d.y; applyZoom(); }
      if (d && d.mode === "ruler") measure(d, e);
      if (d && d.mode === "wl") {
        state.wlAuto = false;
        state.win = Math.max(1, Math.min(255, d.win + (e.clientX - d.x)));
        state.lev = Math.max(0, Math.min(255, d.lev - (e.clientY - d.y)));
        render();
      }
      onPointer(e);
    });
    fr.addEventListener("mouseleave", () => { state.drag = null; document.querySelectorAll(".cross").forEach((m) => { m.hidden = true; }); });
    fr.addEventListener("mousedown", (e) => {
      const a = e.button === 0 && ($("ruler").checked || e.shiftKey) ? pixelAt(fr.querySelector("canvas"), e) : null;
      if (a) { state.drag = { mode: "ruler", a, x: e.clientX, y: e.clientY, frame: fr }; measure(state.drag, e); return; }
      if (e.button === 2) state.drag = { mode: "wl", x: e.clientX, y: e.clientY, win: state.win, lev: state.lev };
      else if (e.button === 0 && state.zoom > 1) state.drag = { mode: "pan", x: e.clientX, y: e.clientY, px: state.panX, py: state.panY };
    });
    fr.addEventListener("contextmenu", (e) => e.preventDefault());
    fr.addEventListener("wheel", (e) => {
      if (!state.items.length) return;
      e.preventDefault();
      if (e.ctrlKey) setZoom(state.zoom * (e.deltaY < 0 ? 1.15 : 1 / 1.15), e);
      else step(e.deltaY > 0 ? 1 : -1);
    }, { passive: false });
  }
  document.addEventListener("mouseup", () => { state.drag = null; });
}

// A ruler on the canvas views (Ruler ticked, or Shift+drag): the distance in mm from the voxel size (in
// px where an image has none), drawn on every panel; cleared by the next slice, zoom or pan.
export function measure(d, e) {
  const it = state.items[state.index];
  const b = pixelAt(d.frame.querySelector("canvas"), e);
  if (!it || !b) return;
  const g = state.study && state.study.geometry;
  let mm = null;
  if (g) {
    const col = Math.hypot(g.affine[0][0], g.affine[1][0], g.affine[2][0]), row = Math.hypot(g.affine[0][1], g.affine[1][1], g.affine[2][1]);
    mm = Math.hypot((b.x - d.a.x) * col, (b.y - d.a.y) * row);
  } else if (it.spacing) {
    mm = Math.hypot((b.x - d.a.x) * it.spacing[2], (b.y - d.a.y) * it.spacing[1]);
  }
  const px = Math.hypot(b.x - d.a.x, b.y - d.a.y);
  const text = mm !== null ? `${mm.toFixed(1)} mm` : `${px.toFixed(1)} px (no voxel size)`;
  for (const id of CANVASES) {
    const fr = $(`frame-${id}`), box = fr.getBoundingClientRect();
    let svg = fr.querySelector("svg.ruler");
    if (!svg) {
      svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
      svg.setAttribute("class", "ruler");
      svg.innerHTML = '<line stroke="#ffd400" stroke-width="2"/><text fill="#ffd400" font-size="13" paint-order="stroke" stroke="#000" stroke-width="3"></text>';
      fr.append(svg);
    }
    const src = d.frame.getBoundingClientRect();
    const [x1, y1, x2, y2] = [d.x - src.left, d.y - src.top, e.clientX - src.left, e.clientY - src.top];
    const line = svg.querySelector("line"), label = svg.querySelector("text");
    Object.entries({ x1, y1, x2, y2 }).forEach(([k, v]) => line.setAttribute(k, String(v)));
    label.setAttribute("x", String(x2 + 6)); label.setAttribute("y", String(y2 - 6));
    label.textContent = text;
    svg.hidden = box.width === 0;
  }
  $("readout").dataset.distance = mm !== null ? mm.toFixed(2) : "";
  $("readout").textContent = `distance ${text}`;
}

export function clearRuler() { document.querySelectorAll("svg.ruler").forEach((r) => r.remove()); }

export function step(delta) {
  if (state.items.length < 2) return;
  state.index = Math.max(0, Math.min(state.items.length - 1, state.index + delta));
  $("slice").value = String(state.index);
  clearRuler();
  render();
  if (state.lastPointer) onPointer(state.lastPointer); // the readout follows the slice under the pointer
}
