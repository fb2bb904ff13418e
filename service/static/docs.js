// The API reference page: routes from /openapi.json, every string set as text (`el`, dom.js).
"use strict";

async function start() {
  const box = document.getElementById("routes");
  const r = await fetch("/openapi.json");
  if (!r.ok) {
    box.replaceChildren(el("p", {class: "error"}, `cannot read /openapi.json: HTTP ${r.status}`));
    return;
  }
  const spec = await r.json();
  const rows = [];
  for (const [path, ops] of Object.entries(spec.paths || {})) {
    for (const [method, op] of Object.entries(ops)) {
      const codes = Object.keys(op.responses || {}).join(" ");
      rows.push(el("tr", {}, el("td", {class: "method"}, method.toUpperCase()), el("td", {class: "path"}, path),
        el("td", {}, (op.description || op.summary || "").split("\n")[0]), el("td", {class: "muted"}, codes)));
    }
  }
  box.replaceChildren(el("table", {}, el("tr", {}, el("th", {}, "method"), el("th", {}, "path"),
    el("th", {}, "what"), el("th", {}, "answers")), ...rows));
}

document.addEventListener("DOMContentLoaded", start);
