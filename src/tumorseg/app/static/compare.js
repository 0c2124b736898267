// "Compare with a prior study": a baseline and a follow-up of one patient sent as one job
// (/api/jobs/followup), then three linked panels drawn by NiiVue in the baseline's patient space:
// baseline | follow-up (registered onto the baseline, for showing only) | change (unchanged, new, resolved),
// with one crosshair, slice, zoom and pan across the three, and the numbers of followup.json beside them.
// The numbers are measured by the server (followup.compare), each time point in its own space.
import { $, api, authHeaders, downloadUrl, formatSeconds, showError, state } from "./state.js";

const VENDOR = "/static/vendor/niivue-0.69.0.umd.js";
// change map colours (label 1, 2, 3): the same three the legend and side_by_side.png use
const CHANGE_LUT = { R: [0, 255, 255, 0], G: [0, 220, 0, 200], B: [0, 0, 255, 255], A: [0, 160, 220, 220], I: [0, 1, 2, 3] };
let viewers = [];

function loadLibrary() {
  if (window.niivue) return Promise.resolve(window.niivue);
  return new Promise((resolve, reject) => {
    const s = document.createElement("script");
    s.src = VENDOR;
    s.onload = () => resolve(window.niivue);
    s.onerror = () => reject(new Error("the follow-up viewer could not be loaded"));
    document.head.append(s);
  });
}

export function initCompare() {
  $("fu-open").addEventListener("click", () => show(true));
  $("fu-close").addEventListener("click", () => show(false));
  $("fu-form").addEventListener("submit", (e) => { e.preventDefault(); run(); });
}

function show(on) {
  // the voxel size for slice folders is shown (and editable) in the panel, starting from the toolbar's
  if (on && !$("fu-spacing").value) $("fu-spacing").value = $("spacing").value.trim();
  $("followup").hidden = !on;
  document.querySelector(".workspace").hidden = on;
}

async function run() {
  const b = $("fu-baseline").files, f = $("fu-followup").files;
  if (!b.length || !f.length) { showError(["Choose the baseline (earlier) and the follow-up (later) study."]); return; }
  const fd = new FormData();
  for (const x of b) fd.append("baseline", x, x.name);
  for (const x of f) fd.append("followup", x, x.name);
  if ($("fu-interval").value) fd.append("interval", $("fu-interval").value);
  if ($("fu-force").checked) fd.append("force", "true");
  if ($("fu-spacing").value.trim()) fd.append("spacing", $("fu-spacing").value.trim());
  showError([]);
  $("fu-progress").hidden = false;
  $("fu-go").disabled = true;
  try {
    const job = await api("/api/jobs/followup", { method: "POST", body: fd });
    let v = job;
    while (!["done", "failed", "cancelled"].includes(v.state)) {
      await new Promise((r) => setTimeout(r, 400));
      v = await api(`/api/jobs/${job.job_id}`);
      $("fu-bar").max = Math.max(1, v.total);
      $("fu-bar").value = v.done;
      $("fu-status").textContent = v.total ? `Segmenting both studies: ${v.done} of ${v.total} slices` +
        (v.eta_s != null ? ` · about ${formatSeconds(v.eta_s)} left` : "") + (v.done === v.total ? " · registering…" : "") : "Reading the studies…";
    }
    if (v.state !== "done") throw new Error(v.error || `the comparison ${v.state}`);
    // the numbers are final: say so and free Compare at once; the panels draw beside them
    $("fu-progress").hidden = true;
    $("fu-go").disabled = false;
    await showResult(v.result);
  } catch (e) {
    showError([e.message]);
  } finally {
    $("fu-progress").hidden = true;
    $("fu-go").disabled = false;
  }
}

const ml = (x) => (x == null ? "–" : `${x.toFixed(2)} mL`);
const mm = (x) => (x == null ? "–" : `${x.toFixed(1)} mm`);
const pct = (x) => (x == null ? "–" : `${x >= 0 ? "+" : ""}${(100 * x).toFixed(0)} %`);

function numbers(s) {
  const reg = s.registration;
  const rows = [
    ["", "Baseline", "Follow-up"],
    ["Date", s.baseline.date || "–", s.followup.date || "–"],
    ["Volume", ml(s.baseline.volume_ml), ml(s.followup.volume_ml)],
    ["Largest diameter", mm(s.baseline.largest_diameter_mm), mm(s.followup.largest_diameter_mm)],
    ["Product (2 diameters)", `${s.baseline.bidimensional.product_mm2.toFixed(0)} mm²`, `${s.followup.bidimensional.product_mm2.toFixed(0)} mm²`],
  ];
  const t = $("fu-numbers");
  t.replaceChildren(...rows.map((r, i) => {
    const tr = document.createElement("tr");
    for (const c of r) { const el = document.createElement(i === 0 ? "th" : "td"); el.textContent = c; tr.append(el); }
    return tr;
  }));
  const band = s.repeatability;
  const within = (ok, v) => (band && ok ? ` — within the model's repeatability of ±${v.toFixed(1)} mL` : "");
  const change = [
    ["Volume change", `${s.volume_change_ml >= 0 ? "+" : ""}${s.volume_change_ml.toFixed(2)} mL (${pct(s.volume_change_relative)})${band && band.volume_change_within ? ` — within the model's repeatability of ±${band.abs_volume_change_pct.toFixed(0)} %` : ""}`],
    ["Days between", s.days_between == null ? "unknown (give the days)" : String(s.days_between)],
    ["Growth", s.growth_ml_per_month == null ? "–" : `${s.growth_ml_per_month >= 0 ? "+" : ""}${s.growth_ml_per_month.toFixed(2)} mL / month`],
    ["New", `${ml(s.new_ml)}${within(band && band.new_within, band && band.new_ml)}`],
    ["Resolved", `${ml(s.resolved_ml)}${within(band && band.resolved_within, band && band.resolved_ml)}`],
    ["Registration", `brain overlap ${reg.brain_dice.toFixed(3)}, FLAIR correlation ${reg.correlation.toFixed(3)} (${reg.trusted ? "trusted" : "NOT trusted"})`],
  ];
  $("fu-change").replaceChildren(...change.map(([k, v]) => {
    const d = document.createElement("div");
    d.innerHTML = `<span class="k"></span><span class="v"></span>`;
    d.firstChild.textContent = k; d.lastChild.textContent = v;
    return d;
  }));
  $("fu-rano").textContent = s.rano_style;
  $("fu-flag").hidden = reg.trusted;
  $("fu-flag").textContent = reg.trusted ? "" : `The registration is not trusted (${(reg.why_not_trusted || []).join("; ")}): the change map and the new and resolved volumes are unreliable; each study's own volume still stands.`;
  $("fu-notes").textContent = (s.notes || []).join(" ");
}

function zipName(s) {
  // followup_<baseline>_<follow-up>.zip: each study's file or folder name, without extensions or odd characters
  const stem = (p) => String(p || "study").split(/[\\/]/).filter(Boolean).pop().replace(/\.(nii\.gz|nii|zip|dcm)$/i, "").replace(/[^A-Za-z0-9._-]+/g, "_").slice(0, 40);
  return `followup_${stem(s.baseline.source)}_${stem(s.followup.source)}.zip`;
}

async function showResult(res) {
  numbers(res.summary);
  $("fu-result").hidden = false;
  $("fu-result").dataset.ready = "0";
  $("fu-download").onclick = () => downloadUrl(res.download, zipName(res.summary));
  const lib = await loadLibrary();
  const headers = authHeaders();
  const panels = [
    [{ url: res.views.baseline, colormap: "gray" }, { url: res.views.baseline_mask, colormap: "red", opacity: 0.35, cal_min: 0.5, cal_max: 1 }],
    [{ url: res.views.followup, colormap: "gray" }, { url: res.views.followup_mask, colormap: "red", opacity: 0.35, cal_min: 0.5, cal_max: 1 }],
    [{ url: res.views.baseline, colormap: "gray" }, { url: res.views.change, colormap: "gray", opacity: 0.75 }],
  ];
  viewers = [];
  for (let k = 0; k < 3; k++) {
    const nv = new lib.Niivue({ show3Dcrosshair: false, isRadiologicalConvention: state.convention === "radiological", backColor: [0.05, 0.07, 0.09, 1],
      crosshairColor: [0.22, 1, 0.08, 1], isColorbar: false, sagittalNoseLeft: true, dragMode: 3 });
    await nv.attachToCanvas($(`fu-nv${k}`));
    await nv.loadVolumes(panels[k].map((v, i) => ({ ...v, name: `${k}-${i}.nii.gz`, headers })));
    if (k === 2) {
      nv.volumes[1].setColormapLabel(CHANGE_LUT);
      nv.updateGLVolume();
    }
    nv.setSliceType(nv.sliceTypeAxial);
    viewers.push(nv);
  }
  // one crosshair, slice, zoom and pan for the three (each tells the other two); each canvas carries its
  // crosshair in RAS mm (data-mm) for assistive tools and tests
  for (const nv of viewers) {
    nv.broadcastTo(viewers.filter((o) => o !== nv), { "2d": true, "3d": true, crosshair: true, zoomPan: true, sliceType: true });
    nv.onLocationChange = () => setTimeout(markCrosshairs, 0);
  }
  // open on the baseline's slice of largest tumour (the PNG's slice), in the baseline's voxel grid
  const k = res.summary.baseline.bidimensional.slice;
  if (k) {  // the same point in each: all three are on the baseline's grid
    const v0 = viewers[0];
    const dims = v0.volumes[0].dims;
    const mmPos = v0.frac2mm(v0.vox2frac([Math.floor(dims[1] / 2), Math.floor(dims[2] / 2), k - 1]));
    for (const nv of viewers) { nv.scene.crosshairPos = nv.mm2frac(mmPos); nv.drawScene(); }
  }
  markCrosshairs();
  $("fu-result").dataset.ready = "1";
}

function markCrosshairs() {
  viewers.forEach((nv, k) => { $(`fu-nv${k}`).dataset.mm = Array.from(nv.frac2mm(nv.scene.crosshairPos)).slice(0, 3).map((x) => x.toFixed(1)).join(","); });
}
