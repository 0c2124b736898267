// Shared page state, the API client (bearer token, JSON errors) and small helpers.

export const $ = (id) => document.getElementById(id);

// The threshold shown: the one place the page reads it (every number and download belongs to it).
export function currentThreshold() { return parseFloat($("threshold").value); }

export const state = { items: [], index: 0, study: null, official: null, syncTimer: 0, convention: "radiological", layout: "side",
  seq: -1, win: 255, lev: 128, wlAuto: true, zoom: 1, panX: 0, panY: 0, drag: null,
  token: sessionStorage.getItem("tumorseg-token") || "" };

export function authHeaders() { return state.token ? { Authorization: "Bearer " + state.token } : {}; }

export async function api(path, opts = {}) {
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

export function showError(msgs) {
  const el = $("error");
  if (!msgs || !msgs.length) { el.hidden = true; $("error-text").textContent = ""; return; }
  el.hidden = false;
  $("error-text").textContent = msgs.join("\n");
}

export function busy(on, text) { $("busy").hidden = !on; if (text) $("busy-text").textContent = text; }

export function decodePng(b64) {
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

export function formatSeconds(s) { return s < 90 ? `${Math.round(s)} s` : `${Math.round(s / 60)} min`; }

export async function downloadUrl(url, name) {
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

export function download(canvas, name) {
  canvas.toBlob((blob) => {
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = name;
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 2000);
  }, "image/png");
}

export function stem(name) { return name.replace(/\.(nii\.gz|[^.]+)$/i, ""); }

export const SIDE_LAYOUTS = ["side", "sequences"]; // drawn on the page's canvases (the rest: NiiVue)

// The input file's own voxel index (i, j, k as stored: what nibabel, ITK-SNAP and 3D Slicer give) of a point in
// RAS+ mm, from the study's geometry (geometry.file_index); every view shows this one index.
export function fileIndex(geometry, mm) {
  const m = geometry && geometry.file_index;
  if (!m) return null;
  return [0, 1, 2].map((r) => Math.round(m[r][0] * mm[0] + m[r][1] * mm[1] + m[r][2] * mm[2] + m[r][3]));
}
