// Opening files and studies (jobs with progress), results on screen, references, downloads, layouts.
import { offerReference, REF_NAME, runCompare } from "./reference.js";
import { $, api, authHeaders, busy, currentThreshold, decodePng, downloadUrl, fileIndex, formatSeconds, showError, SIDE_LAYOUTS, state, stem } from "./state.js";
import { applyZoom, render, setZoom, showOrientation } from "./viewer.js";
import * as planes from "./planes.js";

export async function makeItem(name, imageB64, probB64, spacing, resultId, slice) {
  const image = await decodePng(imageB64);
  const probRgba = await decodePng(probB64);
  const n = probRgba.width * probRgba.height;
  const prob = new Uint8Array(n);
  let max = 0;
  for (let i = 0; i < n; i++) { const v = probRgba.data[4 * i]; prob[i] = v; if (v > max) max = v; }
  return { name, image, prob, width: image.width, height: image.height, max: max / 255, spacing, resultId, slice };
}

export function naturalKey(name) {
  const m = name.match(/_(\d+)\.[^.]+$/);
  return m ? [name.replace(/_(\d+)\.[^.]+$/, ""), parseInt(m[1], 10)] : [name, 0];
}

// A study runs as a server job: a progress bar with an estimate and a cancel button, never a frozen page.
export async function runStudy(fd, label, endpoint = "/api/jobs/study") {
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
      if (v.name) label = v.name; // the study's name as the CLI names it (the case, the patient, the series)
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

export function studyOf(r) { return { ...r.measurements, source: r.filename, geometry: r.geometry, exports: r.exports }; }

export async function openFiles(fileList) {
  const all = Array.from(fileList);
  const refs = all.filter((f) => REF_NAME.test(f.name));
  const files = all.filter((f) => !REF_NAME.test(f.name));
  const folder = all.length && all[0].webkitRelativePath ? all[0].webkitRelativePath.split("/")[0] : "";
  showError([]); // a new choice clears the last one's errors
  if (!files.length) {
    if (refs.length && state.study) { state.refFiles = refs; if (await runCompare()) render(); return; }
    // a label map alone is not an MRI: say so (the documented warning) rather than do nothing
    showError([`${refs.map((f) => f.name).join(", ")}: a reference label map (a _seg or _mask file), not an MRI. ` +
      "Open the study itself (its sequences or its folder); the label map is then offered as the reference to compare with."]);
    return;
  }
  const errors = [];
  const items = [];
  let study = null;
  const threshold = currentThreshold();
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
    busy(true, kind === "study-file" ? `Segmenting ${files[0].name}…` : `Reading ${folder || `${files.length} files`}…`);
    const fd = new FormData();
    if (kind === "study-file") fd.append("file", files[0], files[0].name);
    else for (const f of files) fd.append("files", f, f.name);
    const sp = $("spacing") ? $("spacing").value.trim() : "";
    if (sp) fd.append("spacing", sp);
    if (folder && kind === "study-files") fd.append("folder", folder);
    try {
      const r = await runStudy(fd, folder || (kind === "study-file" ? files[0].name : `${files.length} files`));
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

export function showStudies(opened, threshold) {
  const pick = $("study-pick");
  pick.textContent = "";
  opened.forEach((o, k) => { const opt = document.createElement("option"); opt.value = String(k); opt.textContent = o.name; pick.append(opt); });
  pick.hidden = opened.length < 2;
  pick.onchange = () => { const o = opened[parseInt(pick.value, 10)]; showResults(o.items, o.study, threshold, null, true); };
  if (opened.length) showResults(opened[0].items, opened[0].study, threshold, null, true);
}

// One way to put results on screen, whatever they came from (files, a folder, the PACS).
export function showResults(items, study, threshold, pacs, keepPicker) {
  if (!keepPicker) $("study-pick").hidden = true;
  state.pacs = pacs;
  $("pacs-store").hidden = !pacs;
  $("pacs-result").textContent = "";
  if (!items.length) return;
  if (!study) items.sort((a, b) => { const ka = naturalKey(a.name), kb = naturalKey(b.name); return ka[0] < kb[0] ? -1 : ka[0] > kb[0] ? 1 : ka[1] - kb[1]; });
  state.items = items;
  state.study = study;
  state.official = null;
  // a study opens on FLAIR in grey (the abnormality the model segments), as a radiologist reads it; an image
  // keeps its composite of the three sequences
  state.seq = study ? 1 : -1;
  $("sequence").value = String(state.seq);
  document.querySelector(".side").scrollTop = 0; // a new study starts with its numbers and the first controls in view
  state.refFiles = null;
  $("ref-offer").hidden = true;
  planes.forget();
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

export function bestSlice(items, thr) {
  let best = 0, bestCount = -1;
  const t = Math.round(thr * 255);
  items.forEach((it, i) => { let c = 0; for (const v of it.prob) if (v >= t) c++; if (c > bestCount) { bestCount = c; best = i; } });
  return best;
}

// The CLI's <name>_mask.png, made by the server (never re-thresholded here).
export function downloadMask() {
  const it = state.items[state.index];
  const thr = currentThreshold();
  const q = `threshold=${thr}&slice=${it.slice}&convention=${state.convention}`;
  downloadUrl(`/api/result/${it.resultId}/mask.png?${q}`, downloadName(it, "mask"));
}

// <study>_slice0123_<what>.png for a study's slice (numbered from 1, as on screen), <image>_<what>.png otherwise.
export function downloadName(it, what) {
  return state.study ? `${stem(state.study.source || "study")}_slice${String(it.slice + 1).padStart(4, "0")}_${what}.png` : `${stem(it.name)}_${what}.png`;
}

export function downloadStudyFile(file) {
  const it = state.items[state.index];
  const thr = currentThreshold();
  downloadUrl(`/api/result/${it.resultId}/${file}?threshold=${thr}`, `${stem(state.study.source || "study")}_${file}`);
}

export function downloadStudy() {
  const it = state.items[state.index];
  const thr = currentThreshold();
  downloadUrl(`/api/result/${it.resultId}/study.zip?threshold=${thr}`, `${stem(state.study.source || "study")}_tumorseg.zip`);
}

// ---- layouts: original | AI side by side (the paper's view), or the study in patient space (NiiVue)
export const LAYOUTS = ["side", "sequences", "multi", "axial", "coronal", "sagittal"];


export async function setLayout(layout) {
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
  const geo = state.study.geometry;
  if (geo && !geo.spacing_known) showError(["The voxel size of this study is unknown: the planes are drawn with 1 mm voxels, so they look flattened. Give the voxel size (Voxel (mm)) and open the study again for true proportions."]);
  if (!planes.isOpen()) $("readout").textContent = "Loading the three-plane viewer and the study's volumes…";
  try {
    await planes.open($("nv"), {
      resultId: it.resultId, sequence: seq, threshold: currentThreshold(), opacity: parseFloat($("opacity").value),
      radiological: state.convention === "radiological", layout, headers: authHeaders(), ruler: $("ruler").checked,
      slice: it.slice, width: it.width, height: it.height,
      fileIndex: (mm) => fileIndex(geo, mm),
      onLocation: (text, d) => {
        $("readout").textContent = text;
        $("readout").dataset.ras = Array.from(d.mm).slice(0, 3).map((x) => x.toFixed(2)).join(",");
        $("readout").dataset.voxel = d.vox.join(",");
        // the side panel follows the slice the planes moved to (the view's grid is the held study's: its slice)
        const k = d.view ? Math.round(d.view[2]) : NaN;
        if (Number.isInteger(k) && k >= 0 && k < state.items.length && k !== state.index) {
          state.index = k;
          $("slice").value = String(k);
          render();
        }
      },
    });
  } catch (e) {
    showError([`Three planes: ${e.message}`]);
  }
}

export function updatePlanes() {
  if (SIDE_LAYOUTS.includes(state.layout) || !planes.isOpen()) return;
  planes.update({ threshold: currentThreshold(), opacity: parseFloat($("opacity").value),
    radiological: state.convention === "radiological", layout: state.layout, ruler: $("ruler").checked });
}

export function setConvention(conv) {
  state.convention = conv;
  $("neuro").checked = conv === "neurological";
  applyZoom();
  showOrientation();
  updatePlanes();
}

export function toggleHelp(on) { $("shortcuts").hidden = !on; if (on) $("shortcuts-close").focus(); }
