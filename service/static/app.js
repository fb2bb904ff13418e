// The species-lookup page: identify a photo (a run's prediction and the nearest stored photos),
// or search the stored photos by words (the store's text tower; with the photo, both blended).
// Every string that comes from data (labels, run names, file names,
// error text) reaches the page through `el` (dom.js), as text or through an attribute setter,
// never parsed as HTML. The page's Content-Security-Policy allows only this service's script
// files. The API key is sent only as a header to this origin.
"use strict";

const $ = (id) => document.getElementById(id);

function show(id, ...children) {
  $(id).replaceChildren(...children.filter((c) => c !== null && c !== undefined));
}

let photo = null;
let textBackbone = null; // the first column with a text tower, searched by words
let towerNote = ""; // which text tower the words go through
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
  canSearch();
}

// Which column the words are searched in; where none has a text tower, the one-line reason.
async function loadTextSearch() {
  textBackbone = null;
  towerNote = "";
  const r = await fetch("/v1/backbones", {headers: headers()});
  if (!r.ok) {
    show("text-status", el("span", {class: "error"}, "cannot read the store's backbones: " + (await errorText(r))));
  } else {
    const columns = (await r.json()).store;
    const col = columns.find((c) => c.text_tower);
    if (col) {
      textBackbone = col.name;
      towerNote = `words are compared with the photos through the ${col.text_tower} text tower of ${col.name}`;
      $("text-status").textContent = towerNote;
    } else {
      const why = columns.length ? columns[0].no_text_tower : "the store has no embeddings";
      show("text-status", el("span", {class: "error"}, why));
    }
  }
  canSearch();
}

function canSearch() {
  $("find").disabled = !(textBackbone && $("text").value.trim());
  $("blend").disabled = !photo;
}

async function searchWords() {
  const text = $("text").value.trim();
  $("find").disabled = true;
  $("text-status").textContent = "searching…";
  const fields = {text, k: Number($("k").value), backbone: textBackbone};
  let request;
  if ($("blend").checked && photo) {
    request = {method: "POST", headers: headers(), body: form({...fields, weight: $("weight").value})};
  } else {
    request = {method: "POST", headers: {...headers(), "Content-Type": "application/json"}, body: JSON.stringify(fields)};
  }
  try {
    const r = await fetch("/v1/search", request);
    if (!r.ok) throw new Error(await errorText(r));
    const q = (await r.json())[0];
    const blend = q.image ? ` and like ${q.image}` : "";
    showNeighbors(q, `Stored photos matching “${text}”${blend}`);
    $("text-status").textContent = towerNote;
  } catch (e) {
    show("text-status", el("span", {class: "error"}, e.message));
  }
  canSearch();
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
    if (l.ok) showNeighbors((await l.json())[0], "Nearest stored photos");
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

function showNeighbors(q, title) {
  $("nearest").hidden = false;
  $("nearest-title").textContent = title;
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
  $("key").addEventListener("change", () => {
    sessionStorage.setItem("embedstore-key", $("key").value);
    loadRuns();
    loadTextSearch();
  });
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
  $("text").addEventListener("input", canSearch);
  $("text").addEventListener("keydown", (e) => { if (e.key === "Enter" && !$("find").disabled) searchWords(); });
  $("find").addEventListener("click", searchWords);
  loadRuns();
  loadTextSearch();
}

document.addEventListener("DOMContentLoaded", start);
