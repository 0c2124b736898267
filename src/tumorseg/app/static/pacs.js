// The PACS panel (DICOMweb), when the app was started with --dicomweb: the server holds the credentials.
import { $, api, busy, currentThreshold, showError, state } from "./state.js";
import { makeItem, runStudy, showResults, studyOf } from "./study.js";

// ---- the PACS (DICOMweb), when the app was started with --dicomweb: the server holds the credentials
export async function initPacs() {
  let info;
  try { info = await api("/api/pacs"); } catch (e) { return; }
  if (!info.enabled) return;
  $("pacs").hidden = false;
  $("pacs-url").textContent = info.url;
  $("pacs-search").addEventListener("submit", (e) => { e.preventDefault(); searchPacs(); });
  $("pacs-store").addEventListener("click", storePacs);
  searchPacs();
}

export async function searchPacs() {
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

export async function openPacs(uid, label) {
  showError([]);
  const threshold = currentThreshold();
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

export async function storePacs() {
  const it = state.items[state.index];
  if (!it || !state.pacs) return;
  const fd = new FormData();
  fd.append("result_id", it.resultId);
  fd.append("threshold", String(currentThreshold()));
  $("pacs-result").textContent = "sending…";
  try {
    const r = await api("/api/pacs/store", { method: "POST", body: fd });
    $("pacs-result").textContent = `Stored in the PACS study: ${r.stored.join(", ")}`;
  } catch (e) {
    $("pacs-result").textContent = "";
    showError([e.message]);
  }
}
