// tumorseg page: sends files to the local API once, then re-renders threshold, opacity
// and view changes in the browser from the returned probability map (no new model call).
// The browser's threshold is only a preview: the mask, its pixel count, the study volume and
// every download come from the server's post-processing (/api/mask, /api/result/...), the same
// code the CLI runs, so the page and the CLI give one answer.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { items: [], index: 0, study: null, official: null, syncTimer: 0,
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
  if (!msgs || !msgs.length) { el.hidden = true; el.textContent = ""; return; }
  el.hidden = false;
  el.textContent = msgs.join("\n");
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

async function openFiles(fileList) {
  const files = Array.from(fileList).filter((f) => !/_mask\.[^.]+$/i.test(f.name));
  if (!files.length) return;
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
      body: JSON.stringify(Array.from(fileList).map((f) => f.name)) })).kind;
  } catch (e) {
    errors.push(e.message);
  }
  if (kind === "study-file" || kind === "study-files") {
    busy(true, kind === "study-file" ? `Segmenting ${files[0].name}…` : `Segmenting a study of ${files.length} files…`);
    const fd = new FormData();
    if (kind === "study-file") fd.append("file", files[0], files[0].name);
    else for (const f of files) fd.append("files", f, f.name);
    const sp = $("spacing") ? $("spacing").value.trim() : "";
    if (sp) fd.append("spacing", sp);
    try {
      const r = await api("/api/study", { method: "POST", body: fd });
      study = r.measurements;
      for (const [k, s] of r.slices.entries()) items.push(await makeItem(s.name, s.image_png, s.prob_png, r.spacing, r.result_id, k));
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
  if (!items.length) return;
  if (!study) items.sort((a, b) => { const ka = naturalKey(a.name), kb = naturalKey(b.name); return ka[0] < kb[0] ? -1 : ka[0] > kb[0] ? 1 : ka[1] - kb[1]; });
  state.items = items;
  state.study = study;
  state.official = null;
  $("dl-study").hidden = !study;
  state.index = study ? bestSlice(items, threshold) : 0;
  const s = $("slice");
  s.max = String(items.length - 1);
  s.value = String(state.index);
  $("slice-group").hidden = items.length < 2;
  $("dl-mask").disabled = $("dl-overlay").disabled = false;
  $("ph-left").hidden = $("ph-right").hidden = true;
  render();
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
  for (const id of ["orig", "ai"]) { const c = $(id); if (c.width !== w || c.height !== h) { c.width = w; c.height = h; } }
  $("orig").getContext("2d").putImageData(it.image, 0, 0);

  const out = new ImageData(w, h);
  const src = it.image.data, dst = out.data, p = it.prob;
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

function downloadStudy() {
  const it = state.items[state.index];
  const thr = parseFloat($("threshold").value);
  downloadUrl(`/api/result/${it.resultId}/study.zip?threshold=${thr}`, `${stem(state.study.source || "study")}_tumorseg.zip`);
}

function step(delta) {
  if (state.items.length < 2) return;
  state.index = Math.max(0, Math.min(state.items.length - 1, state.index + delta));
  $("slice").value = String(state.index);
  render();
}

async function init() {
  for (const id of ["file-input", "folder-input"]) {
    $(id).addEventListener("change", (e) => { openFiles(e.target.files); e.target.value = ""; });
  }
  for (const id of ["threshold", "opacity"]) $(id).addEventListener("input", render);
  $("slice").addEventListener("input", (e) => { state.index = parseInt(e.target.value, 10); render(); });
  document.querySelectorAll("input[name=mode]").forEach((r) => r.addEventListener("change", render));
  $("dl-mask").addEventListener("click", downloadMask);
  $("dl-study").addEventListener("click", downloadStudy);
  $("dl-overlay").addEventListener("click", () => download($("ai"), `${stem(state.items[state.index].name)}_overlay.png`));
  document.addEventListener("keydown", (e) => {
    if (e.target.tagName === "INPUT" && e.target.type !== "range" && e.target.type !== "radio") return;
    if (e.key === "ArrowRight" || e.key === "ArrowDown") { e.preventDefault(); step(1); }
    if (e.key === "ArrowLeft" || e.key === "ArrowUp") { e.preventDefault(); step(-1); }
  });
  ["dragenter", "dragover"].forEach((ev) => document.addEventListener(ev, (e) => { e.preventDefault(); document.body.classList.add("dragging"); }));
  ["dragleave", "drop"].forEach((ev) => document.addEventListener(ev, (e) => { e.preventDefault(); document.body.classList.remove("dragging"); }));
  document.addEventListener("drop", (e) => { if (e.dataTransfer && e.dataTransfer.files.length) openFiles(e.dataTransfer.files); });
  try {
    const m = await api("/api/model");
    $("model-info").textContent = `model ${m.model} · ${m.engine}`;
    $("threshold").value = String(m.threshold);
    render();
    $("threshold-val").textContent = parseFloat($("threshold").value).toFixed(2);
  } catch (e) {
    $("model-info").textContent = "model unavailable";
    showError([e.message]);
  }
}

init();
