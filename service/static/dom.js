// The one way the pages put data on screen: every string (labels, run names, file names, error
// text) becomes a text node or an attribute value, never parsed as HTML.
"use strict";

// el("span", {class: "muted"}, "text", child, ...): an element whose children are text nodes
// (strings) or elements; attributes are set one by one, so no string is ever parsed as HTML.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}
