// tumorseg page: sends files to the local API once, then re-renders threshold, opacity
// and view changes in the browser from the returned probability map (no new model call).
// The browser's threshold is only a preview: the mask, its pixel count, the study volume and
// every download come from the server's post-processing (/api/mask, /api/result/...), the same
// code the CLI runs, so the page and the CLI give one answer.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { items: [], index: 0, study: null, official: null, syncTimer: 0, convention: "radiological", layout: "side",
  seq: -1, win: 255, lev: 128, wlAuto: true, zoom: 1, panX: 0, panY: 0, drag: null,
  token: sessionStorage.getItem("tumorseg-token") || "" };

function authHeaders() { return state.token ? { Authorization: "Bearer " + state.token } : {}; }

async function api(path, opts = {}) {
  let res = await fetch(path, { ...opts, headers: { ...(opts.headers || {}), ...authHeaders() } });
  if (res.status === 401) {
    const t = window.prompt("This tumorseg server needs its access token:");
    if (t) { state.token = t; sessionStorage.setItem("tumorseg-token", t); return api(path, opts); }
  }
  let body = null;
  try { body = await res.json(); } catch (e) { body = { error: `server answered ${res.status}` }; }
  if (!res.ok) throw new Error(body && body.error ? body.error : `server answered ${res.status}`);
  return body;
}

function showError(msgs) {
  const el = $("error");
  if (!msgs || !msgs.length) { el.hidden = true; $("error-text").textContent = ""; return; }
  el.hidden = false;
  $("error-text").textContent = msgs.join("\n");
}

function busy(on, text) { $("busy").hidden = !on; if (text) $("busy-text").textContent = text; }

function decodePng(b64) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => {
      const c = document.createElement("canvas");
      c.width = img.width; c.height = img.height;
      const ctx = c.getContext("2d");
      ctx.drawImage(img, 0, 0);
      resolve(ctx.getImageData(0, 0, img.width, img.height));
    };
    img.onerror = () => reject(new Error("could not decode the server's image"));
    img.src = "data:image/png;base64," + b64;
  });
}

async function makeItem(name, imageB64, probB64, spacing, resultId, slice) {
  const image = await decodePng(imageB64);
  const probRgba = await decodePng(probB64);
  const n = probRgba.width * probRgba.height;
  const prob = new Uint8Array(n);
  let max = 0;
  for (let i = 0; i < n; i++) { const v = probRgba.data[4 * i]; prob[i] = v; if (v > max) max = v; }
  return { name, image, prob, width: image.width, height: image.height, max: max / 255, spacing, resultId, slice };
}

function naturalKey(name) {
  const m = name.match(/_(\d+)\.[^.]+$/);
  return m ? [name.replace(/_(\d+)\.[^.]+$/, ""), parseInt(m[1], 10)] : [name, 0];
}

// A folder's reference masks: LGG slices' <slice>_mask images, a BraTS case's _seg file.
const REF_NAME = /(_mask\.[^.]+|_seg\.nii(\.gz)?)$/i;

function formatSeconds(s) { return s < 90 ? `${Math.round(s)} s` : `${Math.round(s / 60)} min`; }

// A study runs as a server job: a progress bar with an estimate and a cancel button, never a frozen page.
async function runStudy(fd, label, endpoint = "/api/jobs/study") {
  const job = await api(endpoint, { method: "POST", body: fd });
  const cancel = $("progress-cancel");
  $("busy").hidden = true;
  $("progress").hidden = false;
  cancel.disabled = false;
  cancel.onclick = async () => {
    cancel.disabled = true;
    $("progress-text").textContent = `Cancelling ${label}…`;
    try { await api(`/api/jobs/${job.job_id}`, { method: "DELETE" }); } catch (e) { /* it finished meanwhile */ }
  };
  try {
    for (;;) {
      const v = await api(`/api/jobs/${job.job_id}`);
      $("progress-bar").max = Math.max(1, v.total);
      $("progress-bar").value = v.done;
      $("progress").dataset.done = String(v.done);
      const eta = v.eta_s !== null && v.eta_s !== undefined ? ` · about ${formatSeconds(v.eta_s)} left` : "";
      if (v.state !== "cancelling") {
        $("progress-text").textContent = v.total ? `Segmenting ${label}: ${v.done} of ${v.total} slices${eta}` : `Reading ${label}…`;
      }
      if (v.state === "done") return v.result;
      if (v.state === "failed") throw new Error(v.error);
      if (v.state === "cancelled") throw new Error(`${label}: cancelled; nothing was kept`);
      await new Promise((r) => setTimeout(r, 250));
    }
  } finally {
    $("progress").hidden = true;
  }
}

function studyOf(r) { return { ...r.measurements, source: r.filename, geometry: r.geometry, exports: r.exports }; }

async function openFiles(fileList) {
  const all = Array.from(fileList);
  const refs = all.filter((f) => REF_NAME.test(f.name));
  const files = all.filter((f) => !REF_NAME.test(f.name));
  const folder = all.length && all[0].webkitRelativePath ? all[0].webkitRelativePath.split("/")[0] : "";
  if (!files.length) {
    if (refs.length && state.study) { state.refFiles = refs; runCompare(); }
    return;
  }
  showError([]);
  const errors = [];
  const items = [];
  let study = null;
  const threshold = parseFloat($("threshold").value);
  let done = 0;
  // What is a study is the server's rule (studies.classify_names): ask it with the names only.
  let kind = "images";
  try {
    kind = (await api("/api/classify", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(files.map((f) => f.name)) })).kind;
  } catch (e) {
    errors.push(e.message);
  }
  if (kind === "studies") {
    // several study files (e.g. two patients' NIfTIs): each is its own study, as in the CLI; a picker switches
    const opened = [];
    for (const f of files) {
      busy(true, `Segmenting ${f.name} (${opened.length + 1} of ${files.length})…`);
      const fd = new FormData();
      fd.append("file", f, f.name);
      try {
        const r = await runStudy(fd, f.name);
        const its = await Promise.all(r.slices.map((s, k) => makeItem(s.name, s.image_png, s.prob_png, r.spacing, r.result_id, k)));
        opened.push({ name: r.filename, items: its, study: studyOf(r) });
      } catch (e) {
        errors.push(e.message.startsWith(f.name) ? e.message : `${f.name}: ${e.message}`);
      }
    }
    busy(false);
    showError(errors);
    showStudies(opened, threshold);
    return;
  }
  if (kind === "study-file" || kind === "study-files") {
    busy(true, kind === "study-file" ? `Segmenting ${files[0].name}…` : `Segmenting a study of ${files.length} files…`);
    const fd = new FormData();
    if (kind === "study-file") fd.append("file", files[0], files[0].name);
    else for (const f of files) fd.append("files", f, f.name);
    const sp = $("spacing") ? $("spacing").value.trim() : "";
    if (sp) fd.append("spacing", sp);
    if (folder && kind === "study-files") fd.append("folder", folder);
    try {
      const r = await runStudy(fd, folder || (kind === "study-file" ? files[0].name : `a study of ${files.length} files`));
      study = studyOf(r);
      // decode every slice's PNGs at once (the browser decodes in parallel), not one after another
      items.push(...(await Promise.all(r.slices.map((s, k) => makeItem(s.name, s.image_png, s.prob_png, r.spacing, r.result_id, k)))));
    } catch (e) {
      errors.push(kind === "study-file" && !e.message.startsWith(files[0].name) ? `${files[0].name}: ${e.message}` : e.message);
    }
  } else {
    for (const f of files) {
      busy(true, files.length > 1 ? `Segmenting ${++done} of ${files.length}…` : `Segmenting ${f.name}…`);
      const fd = new FormData();
      fd.append("file", f, f.name);
      try {
        const r = await api("/api/segment", { method: "POST", body: fd });
        const item = await makeItem(r.filename, r.image_png, r.prob_png, null, r.result_id, 0);
        item.warnings = r.warnings || [];
        items.push(item);
      } catch (e) {
        errors.push(e.message.startsWith(f.name) ? e.message : `${f.name}: ${e.message}`);
      }
    }
  }
  busy(false);
  showError(errors);
  showResults(items, study, threshold, null);
  offerReference(study ? refs : []);
}

// The study's own reference files (a slice folder's masks, a case folder's _seg), offered, never silent.
function offerReference(refs) {
  state.refOffer = refs;
  const b = $("ref-offer");
  b.hidden = !refs.length;
  if (refs.length) {
    b.textContent = refs.length === 1 ? `Compare with ${refs[0].name}` : `Compare with the folder's ${refs.length} masks`;
    b.title = `${b.textContent}: the reference found beside the study (Dice, volumes, a cyan contour)`;
  }
}

function showStudies(opened, threshold) {
  const pick = $("study-pick");
  pick.textContent = "";
  opened.forEach((o, k) => { const opt = document.createElement("option"); opt.value = String(k); opt.textContent = o.name; pick.append(opt); });
  pick.hidden = opened.length < 2;
  pick.onchange = () => { const o = opened[parseInt(pick.value, 10)]; showResults(o.items, o.study, threshold, null, true); };
  if (opened.length) showResults(opened[0].items, opened[0].study, threshold, null, true);
}

// One way to put results on screen, whatever they came from (files, a folder, the PACS).
function showResults(items, study, threshold, pacs, keepPicker) {
  if (!keepPicker) $("study-pick").hidden = true;
  state.pacs = pacs;
  $("pacs-store").hidden = !pacs;
  $("pacs-result").textContent = "";
  if (!items.length) return;
  if (!study) items.sort((a, b) => { const ka = naturalKey(a.name), kb = naturalKey(b.name); return ka[0] < kb[0] ? -1 : ka[0] > kb[0] ? 1 : ka[1] - kb[1]; });
  state.items = items;
  state.study = study;
  state.official = null;
  state.refFiles = null;
  $("ref-offer").hidden = true;
  if (window.tumorsegPlanes) window.tumorsegPlanes.forget();
  $("dl-study").hidden = $("dl-nifti").hidden = !study;
  $("dl-seg").hidden = !(study && (study.exports || []).includes("mask_seg.dcm"));
  state.wlAuto = true;
  setZoom(1);
  state.ref = null; state.refFile = null;
  $("s-ref-row").hidden = true;
  $("ref-label").hidden = false;
  state.index = study ? bestSlice(items, threshold) : 0;
  const s = $("slice");
  s.max = String(items.length - 1);
  s.value = String(state.index);
  $("slice-group").hidden = items.length < 2;
  $("dl-mask").disabled = $("dl-overlay").disabled = false;
  $("ph-left").hidden = $("ph-right").hidden = true;
  render();
  setLayout(study || SIDE_LAYOUTS.includes(state.layout) ? state.layout : "side");
}

function bestSlice(items, thr) {
  let best = 0, bestCount = -1;
  const t = Math.round(thr * 255);
  items.forEach((it, i) => { let c = 0; for (const v of it.prob) if (v >= t) c++; if (c > bestCount) { bestCount = c; best = i; } });
  return best;
}

function jet(p) {
  const c = (x) => Math.max(0, Math.min(1, x));
  return [c(1.5 - Math.abs(4 * p - 3)) * 255, c(1.5 - Math.abs(4 * p - 2)) * 255, c(1.5 - Math.abs(4 * p - 1)) * 255];
}
const CANVASES = ["orig", "seq1", "seq2", "ai"]; // the canvas views' panels (seq1/seq2: the sequences layout)
const FLOOR = 13; // probability 0.05 in 8-bit: below it the heatmap stays transparent
const JET = Array.from({ length: 256 }, (_, v) => jet(v / 255));

function currentMode() { return document.querySelector("input[name=mode]:checked").value; }

function render() {
  const it = state.items[state.index];
  if (!it) return;
  const thr = parseFloat($("threshold").value);
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

function officialKey(it, thr) { return `${it.resultId}:${it.slice}:${thr.toFixed(4)}`; }

function officialFor(it, thr) {
  const o = state.official;
  return o && o.key === officialKey(it, thr) ? o : null;
}

function scheduleSync() {
  clearTimeout(state.syncTimer);
  state.syncTimer = setTimeout(syncMask, 120);
}

// The server's mask for the current slice and threshold: the one post-processing rule.
async function syncMask() {
  const it = state.items[state.index];
  if (!it || !it.resultId) return;
  const thr = parseFloat($("threshold").value);
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
    if (!cur || officialKey(cur, parseFloat($("threshold").value)) !== key) return; // moved on meanwhile
    state.official = { key, mask, pixels: r.tumour_pixels, measurements: r.measurements || null };
    render();
    if (state.refFile && state.ref && Math.abs(state.ref.threshold - thr) > 1e-9) runCompare();
  } catch (e) {
    showError([e.message]);
  }
}

async function downloadUrl(url, name) {
  try {
    const res = await fetch(url, { headers: authHeaders() });
    if (!res.ok) { let b = {}; try { b = await res.json(); } catch (e) { /* not JSON */ } throw new Error(b.error || `server answered ${res.status}`); }
    const a = document.createElement("a");
    a.href = URL.createObjectURL(await res.blob());
    a.download = name;
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 2000);
  } catch (e) {
    showError([e.message]);
  }
}

// ---- display: window/level, sequence, colour bar, orientation, zoom/pan, crosshair

function wlLut() {
  const lut = new Uint8ClampedArray(256), lo = state.lev - state.win / 2;
  for (let v = 0; v < 256; v++) lut[v] = ((v - lo) / state.win) * 255;
  return lut;
}

// Automatic window: the 1st-99th percentiles of the displayed channel(s), background excluded.
function autoWindow(it) {
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

function drawColorbar(thr) {
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

// How the current study's slice is turned on screen (display.py decides; identity for 2D images).
function turn() {
  const g = state.study && state.study.geometry;
  return g ? g[state.convention] : { transpose: false, flip_x: false, flip_y: false, labels: null, known: false };
}

function showOrientation() {
  const t = turn();
  const o = t.known ? t.labels : null;
  const el = $("orientation");
  for (const side of ["top", "left", "right", "bottom"]) el.querySelector(`.o-${side}`).textContent = o ? o[side] : "";
  el.querySelector(".o-unknown").hidden = !!o || !state.items.length;
  el.querySelector(".o-unknown").textContent = state.study ? "orientation unknown (slice images carry none): shown as stored" : "orientation unknown";
  el.dataset.known = o ? "1" : "0";
  el.dataset.convention = state.convention;
}

function applyZoom() {
  const d = turn();
  const turnCss = `${d.flip_x || d.flip_y ? `scale(${d.flip_x ? -1 : 1}, ${d.flip_y ? -1 : 1}) ` : ""}${d.transpose ? "matrix(0, 1, 1, 0, 0, 0)" : ""}`;
  const t = `translate(${state.panX}px, ${state.panY}px) scale(${state.zoom}) ${turnCss}`;
  for (const id of CANVASES) $(id).style.transform = t;
  $("zoom").value = String(state.zoom);
  $("zoom-val").textContent = `${state.zoom.toFixed(1)}×`;
  $("orig").dataset.zoom = $("ai").dataset.zoom = state.zoom.toFixed(2);
}

function setZoom(z, about) {
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
function pixelAt(canvas, e) {
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

function onPointer(e) {
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
    pos = `RAS ${mm.map((x) => x.toFixed(1)).join(", ")} mm${g.known ? "" : " (geometry assumed)"} · voxel ${pt.x}, ${pt.y}, ${state.index}`;
    $("readout").dataset.ras = mm.map((x) => x.toFixed(2)).join(",");
  } else {
    const sp = it.spacing;
    pos = `x ${pt.x}, y ${pt.y} px` + (sp ? ` · ${(pt.x * sp[2]).toFixed(1)}, ${(pt.y * sp[1]).toFixed(1)} mm` : "");
  }
  $("readout").textContent = `${pos} · probability ${prob.toFixed(2)}`;
  $("readout").dataset.prob = prob.toFixed(3);
}

// ---- compare with the user's reference mask (the server computes Dice as the CLI's --reference does)
async function runCompare() {
  const it = state.items[state.index];
  const refs = state.refFiles && state.refFiles.length ? state.refFiles : state.refFile ? [state.refFile] : [];
  if (!it || !refs.length) return;
  const fd = new FormData();
  fd.append("result_id", it.resultId);
  fd.append("threshold", String(parseFloat($("threshold").value)));
  const perSlice = refs.length > 1 || /_mask\.[^.]+$/i.test(refs[0].name);
  if (perSlice && state.study) for (const f of refs) fd.append("files", f, f.name);
  else fd.append("file", refs[0], refs[0].name);
  try {
    const r = await api("/api/compare", { method: "POST", body: fd });
    const masks = [];
    for (const b64 of r.reference_png) {
      const rgba = await decodePng(b64);
      const m = new Uint8Array(rgba.width * rgba.height);
      for (let i = 0; i < m.length; i++) m[i] = rgba.data[4 * i];
      masks.push(m);
    }
    state.ref = { masks, result: r, threshold: r.threshold };
    let txt = `Dice ${r.dice.toFixed(4)} vs ${r.reference}`;
    if (r.volume_difference_ml !== undefined && r.volume_difference_ml !== null) txt += ` · volume difference ${r.volume_difference_ml >= 0 ? "+" : ""}${r.volume_difference_ml.toFixed(2)} mL (model ${r.model_ml.toFixed(2)}, reference ${r.reference_ml.toFixed(2)})`;
    else txt += ` · model ${r.model_voxels} vs reference ${r.reference_voxels} px`;
    if (r.disagreement && r.disagreement.length) txt += ` · most disagreement on slices ${r.disagreement.map((d) => d.slice + 1).join(", ")}`;
    $("s-ref").textContent = txt;
    $("s-ref").dataset.dice = r.dice.toFixed(6);
    $("s-ref-row").hidden = false;
    render();
  } catch (e) {
    showError([e.message]);
  }
}

function initViewer() {
  $("reference-input").addEventListener("change", (e) => {
    if (e.target.files.length) {
      const fs = Array.from(e.target.files);
      state.refFile = fs[0]; state.refFiles = fs.length > 1 ? fs : null; runCompare();
    }
    e.target.value = "";
  });
  $("sequence").addEventListener("change", (e) => {
    state.seq = parseInt(e.target.value, 10); render();
    if (!SIDE_LAYOUTS.includes(state.layout)) setLayout(state.layout);
  });
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

function download(canvas, name) {
  canvas.toBlob((blob) => {
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = name;
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 2000);
  }, "image/png");
}

function stem(name) { return name.replace(/\.(nii\.gz|[^.]+)$/i, ""); }

// The CLI's <name>_mask.png, made by the server (never re-thresholded here).
function downloadMask() {
  const it = state.items[state.index];
  const thr = parseFloat($("threshold").value);
  const q = `threshold=${thr}&slice=${it.slice}`;
  downloadUrl(`/api/result/${it.resultId}/mask.png?${q}`, state.study ? `${stem(state.study.source || "study")}_slice${String(it.slice + 1).padStart(4, "0")}_mask.png` : `${stem(it.name)}_mask.png`);
}

function downloadStudyFile(file) {
  const it = state.items[state.index];
  const thr = parseFloat($("threshold").value);
  downloadUrl(`/api/result/${it.resultId}/${file}?threshold=${thr}`, `${stem(state.study.source || "study")}_${file}`);
}

function downloadStudy() {
  const it = state.items[state.index];
  const thr = parseFloat($("threshold").value);
  downloadUrl(`/api/result/${it.resultId}/study.zip?threshold=${thr}`, `${stem(state.study.source || "study")}_tumorseg.zip`);
}

// ---- layouts: original | AI side by side (the paper's view), or the study in patient space (NiiVue)
const LAYOUTS = ["side", "sequences", "multi", "axial", "coronal", "sagittal"];
const SIDE_LAYOUTS = ["side", "sequences"]; // drawn on the page's canvases (the rest: NiiVue)

async function setLayout(layout) {
  const it = state.items[state.index];
  if (!SIDE_LAYOUTS.includes(layout) && !state.study) {
    showError(["Three planes need a study (a NIfTI, a DICOM series or a folder of slices); a single image has one plane."]);
    layout = "side";
  }
  state.layout = layout;
  $("layout").value = layout;
  const onCanvas = SIDE_LAYOUTS.includes(layout);
  $("viewer").hidden = !onCanvas;
  $("planes").hidden = onCanvas;
  $("viewer").classList.toggle("four", layout === "sequences");
  document.querySelectorAll(".seq-fig").forEach((f) => { f.hidden = layout !== "sequences"; });
  if (onCanvas) { render(); return; }
  if (!it) return;
  const seq = { 0: "t1", 1: "flair", 2: "t1c" }[state.seq] || "flair";
  try {
    await window.tumorsegPlanes.open($("nv"), {
      resultId: it.resultId, sequence: seq, threshold: parseFloat($("threshold").value), opacity: parseFloat($("opacity").value),
      radiological: state.convention === "radiological", layout, headers: authHeaders(), ruler: $("ruler").checked,
      onLocation: (text, d) => { $("readout").textContent = text; $("readout").dataset.ras = d.mm.map((x) => x.toFixed(2)).join(","); },
    });
  } catch (e) {
    showError([`Three planes: ${e.message}`]);
  }
}

function updatePlanes() {
  if (SIDE_LAYOUTS.includes(state.layout) || !window.tumorsegPlanes || !window.tumorsegPlanes.isOpen()) return;
  window.tumorsegPlanes.update({ threshold: parseFloat($("threshold").value), opacity: parseFloat($("opacity").value),
    radiological: state.convention === "radiological", layout: state.layout, ruler: $("ruler").checked });
}

function setConvention(conv) {
  state.convention = conv;
  $("neuro").checked = conv === "neurological";
  applyZoom();
  showOrientation();
  updatePlanes();
}

function toggleHelp(on) { $("shortcuts").hidden = !on; if (on) $("shortcuts-close").focus(); }

function step(delta) {
  if (state.items.length < 2) return;
  state.index = Math.max(0, Math.min(state.items.length - 1, state.index + delta));
  $("slice").value = String(state.index);
  render();
  if (state.lastPointer) onPointer(state.lastPointer); // the readout follows the slice under the pointer
}

async function init() {
  for (const id of ["file-input", "folder-input"]) {
    $(id).addEventListener("change", (e) => { openFiles(e.target.files); e.target.value = ""; });
  }
  for (const id of ["threshold", "opacity"]) $(id).addEventListener("input", () => { render(); updatePlanes(); });
  $("layout").addEventListener("change", (e) => setLayout(e.target.value));
  $("neuro").addEventListener("change", (e) => setConvention(e.target.checked ? "neurological" : "radiological"));
  $("help").addEventListener("click", () => toggleHelp(true));
  $("ruler").addEventListener("change", updatePlanes);
  $("shortcuts-close").addEventListener("click", () => toggleHelp(false));
  $("error-close").addEventListener("click", () => showError([]));
  $("ref-offer").addEventListener("click", () => { state.refFiles = state.refOffer; runCompare(); });
  $("slice").addEventListener("input", (e) => { state.index = parseInt(e.target.value, 10); render(); });
  document.querySelectorAll("input[name=mode]").forEach((r) => r.addEventListener("change", render));
  $("dl-mask").addEventListener("click", downloadMask);
  $("dl-study").addEventListener("click", downloadStudy);
  $("dl-nifti").addEventListener("click", () => downloadStudyFile("mask.nii.gz"));
  $("dl-seg").addEventListener("click", () => downloadStudyFile("mask_seg.dcm"));
  initViewer();
  $("dl-overlay").addEventListener("click", () => download($("ai"), `${stem(state.items[state.index].name)}_overlay.png`));
  document.addEventListener("keydown", (e) => {
    // Controls keep their own keys (a focused slider moves itself); elsewhere arrows and PageUp/Down scroll slices.
    if (e.key === "Escape") { toggleHelp(false); return; }
    if (["INPUT", "SELECT", "BUTTON", "TEXTAREA"].includes(e.target.tagName)) return;
    if (e.key === "?") { toggleHelp($("shortcuts").hidden); return; }
    const mode = { h: "heatmap", c: "contour", m: "mask" }[e.key.toLowerCase()];
    if (mode) { document.querySelector(`input[name=mode][value=${mode}]`).checked = true; render(); return; }
    if (e.key.toLowerCase() === "r") { setConvention(state.convention === "radiological" ? "neurological" : "radiological"); return; }
    if (e.key.toLowerCase() === "l" && state.study) { setLayout(LAYOUTS[(LAYOUTS.indexOf(state.layout) + 1) % LAYOUTS.length]); return; }
    if (e.key === "ArrowRight" || e.key === "ArrowDown" || e.key === "PageDown") { e.preventDefault(); step(1); }
    if (e.key === "ArrowLeft" || e.key === "ArrowUp" || e.key === "PageUp") { e.preventDefault(); step(-1); }
  });
  ["dragenter", "dragover"].forEach((ev) => document.addEventListener(ev, (e) => { e.preventDefault(); document.body.classList.add("dragging"); }));
  ["dragleave", "drop"].forEach((ev) => document.addEventListener(ev, (e) => { e.preventDefault(); document.body.classList.remove("dragging"); }));
  document.addEventListener("drop", (e) => { if (e.dataTransfer && e.dataTransfer.files.length) openFiles(e.dataTransfer.files); });
  initPacs();
  try {
    const m = await api("/api/model");
    $("model-info").textContent = m.engine_line;
    $("model-info").title = m.engine_line;
    $("threshold").value = String(m.threshold);
    render();
    $("threshold-val").textContent = parseFloat($("threshold").value).toFixed(2);
  } catch (e) {
    $("model-info").textContent = "model unavailable";
    showError([e.message]);
  }
}

init();

// ---- the PACS (DICOMweb), when the app was started with --dicomweb: the server holds the credentials
async function initPacs() {
  let info;
  try { info = await api("/api/pacs"); } catch (e) { return; }
  if (!info.enabled) return;
  $("pacs").hidden = false;
  $("pacs-url").textContent = info.url;
  $("pacs-search").addEventListener("submit", (e) => { e.preventDefault(); searchPacs(); });
  $("pacs-store").addEventListener("click", storePacs);
  searchPacs();
}

async function searchPacs() {
  const q = new URLSearchParams();
  for (const k of ["patient", "name", "date"]) { const v = $("pacs-" + k).value.trim(); if (v) q.set(k, v); }
  const list = $("pacs-list");
  list.textContent = "searching…";
  try {
    const r = await api("/api/pacs/studies?" + q.toString());
    list.textContent = "";
    if (!r.studies.length) { list.textContent = "no MR studies found"; return; }
    for (const s of r.studies) {
      const li = document.createElement("li");
      const b = document.createElement("button");
      b.className = "button"; b.textContent = "Open"; b.dataset.testid = "pacs-open"; b.setAttribute("data-testid", "pacs-open");
      const label = `${s.patient_id} ${s.patient_name} ${s.date} ${s.description || ""}`.trim();
      b.addEventListener("click", () => openPacs(s.study_uid, label));
      const t = document.createElement("span");
      t.textContent = ` ${label} · ${s.series ?? "?"} series`;
      t.title = s.study_uid;
      li.append(b, t);
      list.append(li);
    }
  } catch (e) {
    list.textContent = "";
    showError([e.message]);
  }
}

async function openPacs(uid, label) {
  showError([]);
  const threshold = parseFloat($("threshold").value);
  busy(true, `Retrieving and segmenting ${label}…`);
  const fd = new FormData();
  fd.append("study_uid", uid);
  try {
    const r = await runStudy(fd, label, "/api/jobs/pacs");
    const items = await Promise.all(r.slices.map((s, k) => makeItem(s.name, s.image_png, s.prob_png, r.spacing, r.result_id, k)));
    busy(false);
    showResults(items, studyOf(r), threshold, r.pacs);
  } catch (e) {
    busy(false);
    showError([e.message]);
  }
}

async function storePacs() {
  const it = state.items[state.index];
  if (!it || !state.pacs) return;
  const fd = new FormData();
  fd.append("result_id", it.resultId);
  fd.append("threshold", $("threshold").value);
  $("pacs-result").textContent = "sending…";
  try {
    const r = await api("/api/pacs/store", { method: "POST", body: fd });
    $("pacs-result").textContent = `Stored in the PACS study: ${r.stored.join(", ")}`;
  } catch (e) {
    $("pacs-result").textContent = "";
    showError([e.message]);
  }
}
