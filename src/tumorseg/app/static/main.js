// tumorseg page: sends files to the local API once, then re-renders threshold, opacity
// and view changes in the browser from the returned probability map (no new model call).
// The browser's threshold is only a preview: the mask, its pixel count, the study volume and
// every download come from the server's post-processing (/api/mask, /api/result/...), the same
// code the CLI runs, so the page and the CLI give one answer.
// Entry point: wires the controls and keys, loads the model line (ES modules: state, viewer,
// study, pacs, planes).
import { initCompare } from "./compare.js";
import { initPacs } from "./pacs.js";
import { runCompare } from "./reference.js";
import { $, api, currentThreshold, download, showError, SIDE_LAYOUTS, state } from "./state.js";
import { LAYOUTS, downloadMask, downloadName, downloadStudy, downloadStudyFile, openFiles, setConvention, setLayout, toggleHelp, updatePlanes } from "./study.js";
import { initViewer, render, setColormap, step, turnedCanvas } from "./viewer.js";

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
  $("ref-offer").addEventListener("click", async () => { state.refFiles = state.refOffer; if (await runCompare()) render(); });
  $("slice").addEventListener("input", (e) => { state.index = parseInt(e.target.value, 10); render(); });
  document.querySelectorAll("input[name=mode]").forEach((r) => r.addEventListener("change", render));
  $("dl-mask").addEventListener("click", downloadMask);
  $("dl-study").addEventListener("click", downloadStudy);
  $("dl-nifti").addEventListener("click", () => downloadStudyFile("mask.nii.gz"));
  $("dl-seg").addEventListener("click", () => downloadStudyFile("mask_seg.dcm"));
  initViewer();
  $("reference-input").addEventListener("change", async (e) => {
    if (e.target.files.length) {
      const fs = Array.from(e.target.files);
      state.refFile = fs[0]; state.refFiles = fs.length > 1 ? fs : null;
      if (await runCompare()) render();
    }
    e.target.value = "";
  });
  $("sequence").addEventListener("change", (e) => {
    state.seq = parseInt(e.target.value, 10); render();
    if (!SIDE_LAYOUTS.includes(state.layout)) setLayout(state.layout);
  });
  $("dl-overlay").addEventListener("click", () => download(turnedCanvas($("ai")), downloadName(state.items[state.index], "overlay")));
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
  initCompare();
  try {
    setColormap((await api("/api/colormap")).jet);
    const m = await api("/api/model");
    // short enough for the header at 1280 px; the reason the engine was chosen is one hover (or click) away
    $("model-info").textContent = `model ${m.model} · ${m.engine}`;
    $("model-info").title = m.engine_line;
    $("model-info").dataset.line = m.engine_line;
    $("threshold").value = String(m.threshold);
    render();
    $("threshold-val").textContent = currentThreshold().toFixed(2);
  } catch (e) {
    $("model-info").textContent = "model unavailable";
    showError([e.message]);
  }
}

init();
