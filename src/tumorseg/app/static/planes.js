// Three linked planes (axial, coronal, sagittal) of a held study, drawn by NiiVue (vendored, BSD-2):
// the study's volumes come from /api/result/{id}/view/*.nii.gz in patient space (display.py), so the
// radiological convention, the crosshair in RAS mm and the planes follow the file's geometry, the same
// geometry the side-by-side view uses. Loaded on first use (the library is 2.2 MB).
const VENDOR = "/static/vendor/niivue-0.69.0.umd.js";
let loading = null;
let nv = null;
let current = null;

function loadLibrary() {
  if (window.niivue) return Promise.resolve(window.niivue);
  if (!loading) {
    loading = new Promise((resolve, reject) => {
      const s = document.createElement("script");
      s.src = VENDOR;
      s.onload = () => resolve(window.niivue);
      s.onerror = () => reject(new Error("the three-plane viewer could not be loaded"));
      document.head.append(s);
    });
  }
  return loading;
}

const fmt = (v) => (v >= 0 ? " " : "") + v.toFixed(1);

// opts: { resultId, sequence: "flair"|"t1"|"t1c", threshold, opacity, radiological, layout: "multi"|"axial"|"coronal"|"sagittal",
//         headers, onLocation(text, data) }
export async function open(canvas, opts) {
  const lib = await loadLibrary();
  if (!nv) {
    // sagittalNoseLeft: anterior on the left of the sagittal plane, as the docs and the side-by-side view say
    nv = new lib.Niivue({ show3Dcrosshair: false, isRadiologicalConvention: !!opts.radiological, backColor: [0.05, 0.07, 0.09, 1],
      crosshairColor: [0.22, 1, 0.08, 1], multiplanarForceRender: true, isColorbar: false, dragMode: 1, sagittalNoseLeft: true });
    await nv.attachToCanvas(canvas);
    nv.onAfterDraw = () => placeHooks(canvas); // NiiVue 0.69 calls it after each scene; hooks follow the tiles
  }
  nv.onLocationChange = (d) => {
    const v = d.values || [];
    const prob = v.length > 1 ? v[1].value : NaN;
    const ijk = (opts.fileIndex && opts.fileIndex(d.mm)) || d.vox;
    const text = `RAS ${fmt(d.mm[0])}, ${fmt(d.mm[1])}, ${fmt(d.mm[2])} mm · voxel ${ijk.join(", ")} (i, j, k in the file)` +
      (v.length ? ` · intensity ${Math.round(v[0].value)}` : "") + (Number.isFinite(prob) ? ` · probability ${prob.toFixed(2)}` : "");
    if (opts.onLocation) opts.onLocation(text, { mm: d.mm, vox: ijk, view: d.vox, prob });
  };
  const base = `/api/result/${encodeURIComponent(opts.resultId)}/view`;
  const key = `${opts.resultId}:${opts.sequence}`;
  if (!current || current.key !== key) {
    await nv.loadVolumes([
      { url: `${base}/${opts.sequence}.nii.gz`, name: `${opts.sequence}.nii.gz`, headers: opts.headers, colormap: "gray" },
      { url: `${base}/prob.nii.gz`, name: "prob.nii.gz", headers: opts.headers, colormap: "jet", cal_min: opts.threshold, cal_max: 1, opacity: opts.opacity },
    ]);
    current = { key };
    if (Number.isInteger(opts.slice)) {
      // open on the slice the user was on (column, row, slice of the held study = the view's voxel grid)
      nv.scene.crosshairPos = nv.vox2frac([Math.floor((opts.width || 0) / 2), Math.floor((opts.height || 0) / 2), opts.slice]);
      canvas.dataset.slice = String(opts.slice);
    }
  }
  update(opts);
  // the readout says where the crosshair is as soon as the planes are drawn, not when the pointer first moves
  if (typeof nv.createOnLocationChange === "function") nv.createOnLocationChange();
  canvas.dataset.loaded = key;
  placeHooks(canvas);
  return nv;
}

// One element per drawn plane (#plane-axial, #plane-coronal, #plane-sagittal) over its tile of the NiiVue
// canvas, so a test or an assistive tool can find each plane's image; they take no pointer events.
function placeHooks(canvas) {
  if (!nv || !nv.screenSlices) return;
  const host = canvas.parentElement;
  const ratio = canvas.width / Math.max(1, canvas.clientWidth);
  const names = ["axial", "coronal", "sagittal"];
  const shown = new Set();
  for (const tile of nv.screenSlices) {
    const name = names[tile.axCorSag];
    if (!name || shown.has(name)) continue;
    shown.add(name);
    let el = document.getElementById(`plane-${name}`);
    if (!el) {
      el = document.createElement("div");
      el.id = `plane-${name}`;
      el.dataset.testid = `plane-${name}`;
      el.className = "plane-hook";
      el.setAttribute("role", "img");
      el.setAttribute("aria-label", `${name} plane`);
      host.append(el);
    }
    const [l, t, w, h] = tile.leftTopWidthHeight;
    Object.assign(el.style, { left: `${canvas.offsetLeft + Math.min(l, l + w) / ratio}px`, top: `${canvas.offsetTop + t / ratio}px`,
      width: `${Math.abs(w) / ratio}px`, height: `${h / ratio}px` });
    el.hidden = false;
  }
  for (const name of names) if (!shown.has(name)) { const el = document.getElementById(`plane-${name}`); if (el) el.hidden = true; }
}

export function update(opts) {
  if (!nv || nv.volumes.length < 2) return;
  const p = nv.volumes[1];
  p.cal_min = Math.max(0.01, opts.threshold);
  p.cal_max = 1;
  p.opacity = opts.opacity;
  nv.setRadiologicalConvention(!!opts.radiological);
  const types = { multi: nv.sliceTypeMultiplanar, axial: nv.sliceTypeAxial, coronal: nv.sliceTypeCoronal, sagittal: nv.sliceTypeSagittal };
  nv.setSliceType(types[opts.layout] ?? nv.sliceTypeMultiplanar);
  nv.opts.dragMode = opts.ruler ? nv.dragModes.measurement : nv.dragModes.contrast;
  nv.updateGLVolume();
}

export function isOpen() { return !!current; }

export function forget() { current = null; }
