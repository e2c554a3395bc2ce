// The minisr web page: pick a model and scale, drop or choose an image, POST /upscale, before/after slider, download.
"use strict";
const $ = (id) => document.getElementById(id);
let models = [];
let lastFile = null;
let urls = [];

function status(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

function fillScales() {
  const m = models.find((x) => x.name === $("model").value);
  $("scale").innerHTML = "";
  for (const s of m ? m.scales : []) {
    const o = document.createElement("option");
    o.value = s; o.textContent = "x" + s;
    if (s === m.default_scale) o.selected = true;
    $("scale").appendChild(o);
  }
}

async function loadModels() {
  try {
    const r = await fetch("/models");
    models = (await r.json()).models;
  } catch (e) { status("cannot reach the server: " + e, true); return; }
  for (const m of models) {
    const o = document.createElement("option");
    o.value = o.textContent = m.name;
    $("model").appendChild(o);
  }
  const firstModel = models.find((m) => m.name !== "bicubic");
  if (firstModel) $("model").value = firstModel.name;
  fillScales();
  status("Ready: drop an image.");
}

function setSplit(percent) {
  $("afterClip").style.clipPath = `inset(0 0 0 ${percent}%)`;
  $("handle").style.left = percent + "%";
}

async function upscale(file) {
  if (!file) return;
  lastFile = file;
  const model = $("model").value, scale = $("scale").value;
  status(`Upscaling ${file.name} with ${model} x${scale}…`);
  $("download").hidden = true;
  const form = new FormData();
  form.append("file", file);
  form.append("model", model);
  form.append("scale", scale);
  const t0 = performance.now();
  let r;
  try {
    r = await fetch("/upscale", { method: "POST", body: form });
  } catch (e) { status("request failed: " + e, true); return; }
  if (!r.ok) {
    let msg = r.status + " " + r.statusText;
    try { msg += ": " + (await r.json()).detail; } catch (e) { /* not JSON */ }
    if (r.status === 503) msg += ` (retry after ${r.headers.get("Retry-After")} s)`;
    status(msg, true);
    return;
  }
  const blob = await r.blob();
  for (const u of urls) URL.revokeObjectURL(u);
  const beforeUrl = URL.createObjectURL(file), afterUrl = URL.createObjectURL(blob);
  urls = [beforeUrl, afterUrl];
  const after = $("after"), before = $("before");
  await new Promise((ok) => { after.onload = ok; after.src = afterUrl; });
  // shown at least 512 px wide (pixels as they are, no smoothing), at most the page's width
  const shown = Math.min(900, Math.max(512, after.naturalWidth));
  before.style.width = shown + "px";
  before.style.height = Math.round(shown * after.naturalHeight / after.naturalWidth) + "px";
  before.src = beforeUrl;
  $("hint").hidden = true;
  $("viewer").hidden = false;
  $("slider").hidden = false;
  setSplit($("slider").value);
  const name = (r.headers.get("Content-Disposition") || "").match(/filename="([^"]+)"/);
  const dl = $("download");
  dl.href = afterUrl;
  dl.download = name ? name[1] : "upscaled.png";
  dl.textContent = "Download " + dl.download;
  dl.hidden = false;
  const secs = ((performance.now() - t0) / 1000).toFixed(2);
  $("info").textContent = `${after.naturalWidth}×${after.naturalHeight} in ${secs} s`;
  status(`Done: ${file.name} with ${model} x${scale}.`);
}

$("model").addEventListener("change", () => { fillScales(); if (lastFile) upscale(lastFile); });
$("scale").addEventListener("change", () => { if (lastFile) upscale(lastFile); });
$("file").addEventListener("change", (e) => upscale(e.target.files[0]));
$("slider").addEventListener("input", (e) => setSplit(e.target.value));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files.length) upscale(e.dataTransfer.files[0]);
});
loadModels();
