// The user's reference mask: which files are references, offering the study's own, the comparison (Dice, volumes)
// and withdrawing numbers that no longer belong to the threshold shown.
import { $, api, currentThreshold, decodePng, showError, state } from "./state.js";

// A folder's reference masks: LGG slices' <slice>_mask images, a BraTS case's _seg file.
export const REF_NAME = /(_mask\.[^.]+|_seg\.nii(\.gz)?)$/i;

// The study's own reference files (a slice folder's masks, a case folder's _seg), offered, never silent.
export function offerReference(refs) {
  state.refOffer = refs;
  const b = $("ref-offer");
  b.hidden = !refs.length;
  if (refs.length) {
    b.textContent = refs.length === 1 ? `Compare with ${refs[0].name}` : `Compare with the folder's ${refs.length} masks`;
    b.title = `${b.textContent}: the reference found beside the study (Dice, volumes, a cyan contour)`;
  }
}

export function hasReference() {
  return Boolean(state.refFile || (state.refFiles && state.refFiles.length));
}

// The Dice shown always belongs to the threshold shown: when the threshold moves away from the one the
// reference numbers were computed at, they are withdrawn at once ("updating") until the new ones arrive.
export function markReferenceStale(thr) {
  const el = $("s-ref");
  if (!state.ref || $("s-ref-row").hidden) return;
  const stale = Math.abs(state.ref.threshold - thr) > 1e-9;
  if (stale && el.dataset.stale !== "true") {
    el.dataset.stale = "true";
    el.dataset.dice = "";
    el.textContent = `Dice: updating for threshold ${thr.toFixed(2)}…`;
  }
}

// The server computes Dice as the CLI's --reference does, at the threshold shown; true when the numbers changed (the
// caller redraws: this module draws nothing, so the viewer and the study flow both import it without a circle).
export async function runCompare() {
  const it = state.items[state.index];
  const refs = state.refFiles && state.refFiles.length ? state.refFiles : state.refFile ? [state.refFile] : [];
  if (!it || !refs.length) return false;
  const fd = new FormData();
  fd.append("result_id", it.resultId);
  fd.append("threshold", String(currentThreshold()));
  const perSlice = refs.length > 1 || /_mask\.[^.]+$/i.test(refs[0].name);
  if (perSlice && state.study) for (const f of refs) fd.append("files", f, f.name);
  else fd.append("file", refs[0], refs[0].name);
  const asked = currentThreshold();
  try {
    const r = await api("/api/compare", { method: "POST", body: fd });
    if (Math.abs(currentThreshold() - asked) > 1e-9) return runCompare(); // moved on meanwhile
    const masks = [];
    for (const b64 of r.reference_png) {
      const rgba = await decodePng(b64);
      const m = new Uint8Array(rgba.width * rgba.height);
      for (let i = 0; i < m.length; i++) m[i] = rgba.data[4 * i];
      masks.push(m);
    }
    state.ref = { masks, result: r, threshold: r.threshold };
    let txt = `Dice ${r.dice.toFixed(4)} at threshold ${r.threshold.toFixed(2)} vs ${r.reference}`;
    if (r.volume_difference_ml !== undefined && r.volume_difference_ml !== null) txt += ` · volume difference ${r.volume_difference_ml >= 0 ? "+" : ""}${r.volume_difference_ml.toFixed(2)} mL (model ${r.model_ml.toFixed(2)}, reference ${r.reference_ml.toFixed(2)})`;
    else txt += ` · model ${r.model_voxels} vs reference ${r.reference_voxels} px`;
    if (r.disagreement && r.disagreement.length) txt += ` · most disagreement on slices ${r.disagreement.map((d) => d.slice).join(", ")}`;
    $("s-ref").textContent = txt;
    $("s-ref").title = txt; // clamped to two lines on screen; the whole line on hover
    $("s-ref").dataset.dice = r.dice.toFixed(6);
    $("s-ref").dataset.stale = "false";
    $("s-ref").dataset.threshold = r.threshold.toFixed(2);
    $("s-ref-row").hidden = false;
    return true;
  } catch (e) {
    showError([e.message]);
    return false;
  }
}
