// Flux board behaviour. No inline scripts: this file is served from 'self' under the CSP.
"use strict";

// Label colours come from data attributes; setting them through the CSSOM is allowed by a
// strict style-src, where a style="" attribute would not be.
function paintLabels(root) {
  root.querySelectorAll("[data-colour]").forEach((el) => {
    el.style.setProperty("--label", el.dataset.colour);
  });
}

document.addEventListener("DOMContentLoaded", () => paintLabels(document));
document.addEventListener("htmx:afterSwap", (event) => paintLabels(event.target));
