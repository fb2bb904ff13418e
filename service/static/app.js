// The species-lookup page. Every string that comes from data (labels, run names, file names,
// error text) reaches the page through `el` (dom.js), as text or through an attribute setter,
// never parsed as HTML. The page's Content-Security-Policy allows only this service's script
// files. The API key is sent only as a header to this origin.
"use strict";

const $ = (id) => document.getElementById(id);

function show(id, ...children) {
  $(id).replaceChildren(...children.filter((c) => c !== null && c !== undefined));
}

let photo = null;
const headers = () => ($("key").value ? {"X-API-Key": $("key").value} : {});

async function errorText(response) {
  try {
    const body = await response.json();
    return String(body.detail || body.error || response.status);
  } catch (_e) {
    return `HTTP ${response.status}`;
  }
}

async function loadRuns() {
  const r = await fetch("/v1/runs", {headers: headers()});
  const sel = $("run");
  sel.replaceChildren();
  if (!r.ok) {
    $("status").textContent = "cannot list runs: " + (await errorText(r));
    return;
  }
  for (const run of await r.json()) {
    const option = el("option", {}, `${run.name} (${run.head || run.kind}, ${run.classes.length} classes)`);
    option.value = run.name;
    sel.append(option);
  }
  if (!sel.options.length) $("status").textContent = "no runs yet: train one (POST /v1/train)";
  $("go").disabled = !(photo && sel.options.length);
}

function choose(file) {
  if (!file) return;
  photo = file;
  $("preview").src = URL.createObjectURL(file);
  $("preview").style.display = "block";
  $("go").disabled = !$("run").options.length;
}

function form(extra) {
  const fd = new FormData();
  fd.append("images", photo, photo.name || "photo.jpg");
  for (const [k, v] of Object.entries(extra)) fd.append(k, v);
  return fd;
}

async function identify() {
  $("go").disabled = true;
  $("status").textContent = "identifying…";
  try {
    const [p, l] = await Promise.all([
      fetch("/v1/predict", {method: "POST", headers: headers(), body: form({run: $("run").value, top_k: $("topk").value})}),
      fetch("/v1/lookup", {method: "POST", headers: headers(), body: form({k: $("k").value})}),
    ]);
    if (!p.ok) throw new Error(await errorText(p));
    showPrediction((await p.json())[0]);
    if (l.ok) showNeighbors((await l.json())[0]);
    else $("nearest").hidden = true;
    $("status").textContent = "";
  } catch (e) {
    show("status", el("span", {class: "error"}, e.message));
  }
  $("go").disabled = false;
}

function showPrediction(r) {
  $("result").hidden = false;
  if (r.error) {
    show("verdict", el("span", {class: "error"}, r.error));
    show("labels");
    return;
  }
  if (r.unknown === true) {
    show("verdict", el("span", {class: "unknown"}, "Unknown species"), " ",
      el("span", {class: "muted"}, `(closest: ${r.top_k[0].label})`));
  } else {
    show("verdict", el("span", {class: "known"}, r.label),
      r.unknown === false ? el("span", {class: "muted"}, " (known species)") : null);
  }
  show("labels", ...r.top_k.map((t) => {
    const bar = el("div", {class: "bar"});
    bar.style.width = `${(100 * Number(t.probability)).toFixed(1)}%`;
    return el("tr", {}, el("td", {class: "label"}, t.label), el("td", {class: "bar-cell"}, bar),
      el("td", {}, Number(t.probability).toFixed(4)));
  }));
}

function showNeighbors(q) {
  $("nearest").hidden = false;
  const cards = q.neighbors.map((n) => {
    const img = el("img", {alt: n.label ?? "unlabelled", loading: "lazy"});
    const src = `${n.thumbnail}?size=160`;
    // thumbnails need the key too when the server has one: fetch them as blobs
    if ($("key").value) {
      fetch(src, {headers: headers()}).then((r) => r.blob()).then((b) => { img.src = URL.createObjectURL(b); });
    } else {
      img.src = src;
    }
    return el("div", {class: "card"}, img, el("div", {class: "label"}, n.label ?? "unlabelled"),
      el("div", {class: "muted"}, `similarity ${Number(n.similarity).toFixed(3)}`));
  });
  show("neighbors", ...cards);
}

function start() {
  $("key").value = sessionStorage.getItem("embedstore-key") || "";
  $("key").addEventListener("change", () => { sessionStorage.setItem("embedstore-key", $("key").value); loadRuns(); });
  $("drop").addEventListener("click", () => $("file").click());
  $("file").addEventListener("change", (e) => choose(e.target.files[0]));
  $("drop").addEventListener("dragover", (e) => { e.preventDefault(); $("drop").classList.add("over"); });
  $("drop").addEventListener("dragleave", () => $("drop").classList.remove("over"));
  $("drop").addEventListener("drop", (e) => {
    e.preventDefault();
    $("drop").classList.remove("over");
    choose(e.dataTransfer.files[0]);
  });
  $("go").addEventListener("click", identify);
  loadRuns();
}

document.addEventListener("DOMContentLoaded", start);
