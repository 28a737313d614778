// Time travel: the timeline slider names the moment it points at while it is dragged, and
// Alt + arrow keys step to the previous or next event. htmx does the requests; the page
// works without this file (links and forms).
(() => {
  "use strict";

  const fmt = new Intl.DateTimeFormat(undefined, {
    day: "numeric", month: "short", year: "numeric", hour: "2-digit", minute: "2-digit",
    hour12: false, timeZone: "UTC",
  });

  document.addEventListener("input", (event) => {
    const slider = event.target;
    if (!(slider instanceof HTMLInputElement) || slider.id !== "timeline") return;
    const output = document.getElementById("timeline-value");
    if (output) output.textContent = `${fmt.format(new Date(Number(slider.value) * 1000))} UTC`;
  });

  document.addEventListener("keydown", (event) => {
    if (!event.altKey || event.ctrlKey || event.metaKey) return;
    const id = { ArrowLeft: "step-prev", ArrowRight: "step-next" }[event.key];
    const link = id && document.getElementById(id);
    if (!link) return;
    event.preventDefault();
    link.click();
  });

  // After a step, keep the keyboard where it was: on the step link just used.
  document.addEventListener("htmx:afterSwap", (event) => {
    if (event.target.id !== "travel" && event.detail.target?.id !== "travel") return;
    const trigger = event.detail.requestConfig?.elt?.id;
    const again = trigger && document.getElementById(trigger);
    if (again) again.focus();
  });
})();
