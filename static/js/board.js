// The board: drag and drop (SortableJS), keyboard moves, the card dialog and toasts.
// A move shows at once: the card stays where it was dropped while the move is posted. When
// the server accepts it, it only confirms: the two columns' new counts (out-of-band swaps of
// their heads) and the card's new version (the flux:moved event); with a filter on, it sends
// the two columns afresh instead. When it refuses (someone else moved the card first, a
// blocking WIP limit), it sends fresh copies of every column, which put the card back where
// the server has it; a request that fails outright reloads the board. So the page never
// keeps a card where the server did not put it.
"use strict";

(() => {
  let busy = false; // one move in flight at a time: no double drops
  let refocus = null; // id of the element to focus again after the columns are swapped

  const $ = (selector, root = document) => root.querySelector(selector);
  const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));

  function announce(text) {
    const region = $("#announcer");
    if (!region) return;
    region.textContent = "";
    window.setTimeout(() => { region.textContent = text; }, 30);
  }

  function toast(text, tone = "error") {
    const box = $("#toasts");
    if (!box) return;
    const item = document.createElement("p");
    item.className = `toast toast-${tone}`;
    item.setAttribute("role", "status");
    item.textContent = text;
    box.append(item);
  }

  // Toasts leave by themselves; the live region has already read them out.
  function watchToasts() {
    const box = $("#toasts");
    if (!box) return;
    new MutationObserver((changes) => {
      for (const change of changes) {
        for (const node of change.addedNodes) {
          if (node.nodeType !== 1) continue;
          const items = node.classList.contains("toast") ? [node] : $$(".toast", node);
          for (const item of items) window.setTimeout(() => item.remove(), 6000);
        }
      }
    }).observe(box, { childList: true, subtree: true });
  }

  function cardsOf(list) {
    return $$(":scope > .card", list);
  }

  function columnName(list) {
    return list.closest(".column")?.dataset.name ?? "";
  }

  function setBusy(value) {
    busy = value;
    $("#board")?.classList.toggle("busy", value);
    $$(".board.editable .cards").forEach((list) => {
      const sortable = window.Sortable?.get(list);
      if (sortable) sortable.option("disabled", value);
    });
  }

  function reloadBoard() {
    return htmx.ajax("GET", window.location.href, { target: "#board", swap: "outerHTML" });
  }

  // Post a move of `card`, already placed in `list` in the DOM, with its new neighbours.
  function move(card, list) {
    if (busy || !card.dataset.moveUrl) return;
    const index = cardsOf(list).indexOf(card);
    const siblings = cardsOf(list);
    const after = siblings[index - 1];
    const before = siblings[index + 1];
    const values = { to_column: list.dataset.column, version: card.dataset.version };
    if (after) values.after = after.dataset.card;
    else if (before) values.before = before.dataset.card;
    refocus = document.activeElement === card ? card.id : refocus;
    setBusy(true);
    document.dispatchEvent(new CustomEvent("flux:move-start"));
    announce(`Moving ${card.dataset.ref} to ${columnName(list)}, position ${index + 1}.`);
    htmx
      .ajax("POST", card.dataset.moveUrl + window.location.search, {
        // Not the card itself: a live update may redraw its column while the move is on
        // its way, and the answer's out-of-band parts are looked up from this element.
        source: document.getElementById("main"),
        values,
        swap: "none",
        // The card is already where the person put it: the server only confirms.
        headers: { "X-Flux-Placed": "1" },
      })
      .catch(() => reloadBoard())
      .finally(() => setBusy(false));
  }

  function initSortable(root) {
    if (!window.Sortable) return;
    const lists = root.matches?.(".board.editable .cards")
      ? [root]
      : $$(".board.editable .cards", root);
    for (const list of lists) {
      if (window.Sortable.get(list)) continue;
      window.Sortable.create(list, {
        group: "board",
        draggable: ".card",
        filter: ".more, input, button",
        preventOnFilter: false,
        animation: 120,
        forceFallback: true,
        fallbackTolerance: 4,
        ghostClass: "card-ghost",
        chosenClass: "card-chosen",
        disabled: busy,
        onChange: (event) =>
          announce(`${event.item.dataset.ref} over ${columnName(event.to)}, position ${event.newDraggableIndex + 1}.`),
        onEnd: (event) => {
          if (event.from === event.to && event.oldDraggableIndex === event.newDraggableIndex) return;
          move(event.item, event.to);
        },
      });
    }
  }

  // Alt + arrows move the focused card: left/right to the next column's top, up/down in place.
  const ARROWS = ["ArrowUp", "ArrowDown", "ArrowLeft", "ArrowRight"];

  function onKeydown(event) {
    const card = event.target.closest?.(".board.editable .card");
    if (!card || !event.altKey || !ARROWS.includes(event.key)) return;
    // Always ours on a card, even when it cannot move: Alt+Left must not navigate Back.
    event.preventDefault();
    if (busy) return;
    const list = card.parentElement;
    const lists = $$(".board .cards");
    let target = null;
    if (event.key === "ArrowUp" || event.key === "ArrowDown") {
      const siblings = cardsOf(list);
      const index = siblings.indexOf(card);
      const other = siblings[event.key === "ArrowUp" ? index - 1 : index + 1];
      if (!other) return;
      if (event.key === "ArrowUp") other.before(card);
      else other.after(card);
      target = list;
    } else if (event.key === "ArrowLeft" || event.key === "ArrowRight") {
      target = lists[lists.indexOf(list) + (event.key === "ArrowLeft" ? -1 : 1)];
      if (!target) return;
      target.prepend(card);
    }
    card.focus();
    move(card, target);
  }

  // Dialogs arrive as fragments (or server-rendered with data-open) and open as modals.
  function openDialogs(root) {
    const dialogs = root.matches?.("dialog.dialog") ? [root] : $$("dialog.dialog", root);
    for (const dialog of dialogs) {
      if (dialog.open) dialog.close();
      dialog.showModal();
      dialog.addEventListener("close", () => closeDialog(dialog), { once: true });
    }
  }

  function closeDialog(dialog) {
    const boardUrl = dialog.dataset.boardUrl;
    if (boardUrl && window.location.pathname !== new URL(boardUrl, window.location.href).pathname) {
      window.history.replaceState(window.history.state, "", boardUrl + window.location.search);
    }
    const ref = dialog.dataset.cardRef;
    dialog.remove();
    if (ref) $$(".card").find((card) => card.dataset.ref === ref)?.focus();
  }

  document.addEventListener("click", (event) => {
    const closer = event.target.closest("dialog [data-close]");
    if (!closer) return;
    event.preventDefault();
    closer.closest("dialog").close();
  });

  document.addEventListener("keydown", onKeydown);

  // A confirmed move: the card stays where it was put, with its new version.
  document.addEventListener("flux:moved", (event) => {
    const card = document.getElementById(`card-${event.detail.card}`);
    if (!card) return;
    card.dataset.version = String(event.detail.version);
    const age = card.querySelector("time.age");
    if (age) age.textContent = "now";
  });

  document.addEventListener("htmx:beforeSwap", (event) => {
    const status = event.detail.xhr.status;
    // A conflict or refused input comes with fresh content to show, not a failure to hide.
    if (status === 409 || status === 422) {
      event.detail.shouldSwap = true;
      event.detail.isError = false;
    }
  });

  document.addEventListener("htmx:afterRequest", (event) => {
    const form = event.detail.elt.closest?.("form");
    const ok = event.detail.successful;
    if (ok && form?.closest("#move-dialog")) form.closest("dialog").close();
    if (ok && form?.classList.contains("add-card")) {
      // The title field is preserved across column swaps (hx-preserve), so clear it by id.
      const input = document.getElementById(`add-${form.closest(".column")?.dataset.column}`);
      if (input) input.value = "";
      form.reset();
    }
  });

  document.addEventListener("htmx:responseError", (event) => {
    const status = event.detail.xhr.status;
    const reloading = event.detail.requestConfig?.verb === "get" && event.detail.target?.id === "board";
    if (status === 404 && reloading) {
      // The board itself is gone for us (removed, or access revoked): back to the list.
      window.location.assign("/");
      return;
    }
    const text = status === 403 ? "You do not have permission to do that."
      : status === 404 ? "That is no longer there; the board has been refreshed."
      : `Flux could not do that (error ${status}); the board has been refreshed.`;
    toast(text);
    if ($("#board") && !reloading) reloadBoard();
  });

  document.addEventListener("htmx:sendError", () => {
    toast("Flux cannot be reached; check your connection and try again.");
  });

  document.addEventListener("htmx:timeout", () => {
    toast("Flux is taking too long to answer; the board will refresh when it can.");
  });

  document.addEventListener("htmx:afterSettle", () => {
    if (!refocus) return;
    const wanted = refocus;
    refocus = null;
    // Only give focus back when the swap took it away; never steal it from where the person went.
    const current = document.activeElement;
    if (current && current !== document.body && current.isConnected) return;
    document.getElementById(wanted)?.focus();
  });

  // Filters keep the URL short: empty fields are left out of it.
  document.addEventListener("htmx:configRequest", (event) => {
    if (event.detail.elt.id !== "filters") return;
    for (const name of ["q", "label", "assignee", "release"]) {
      if (!event.detail.parameters[name]) delete event.detail.parameters[name];
    }
  });

  document.addEventListener("htmx:beforeRequest", (event) => {
    // Keep typing into "Add a card…" fluent: the column is swapped, the field comes back focused.
    const form = event.detail.elt.closest?.("form.add-card");
    if (form) refocus = $("input[name=title]", form).id;
  });

  htmx.onLoad((root) => {
    initSortable(root);
    if (root !== document.body) openDialogs(root);
  });

  document.addEventListener("DOMContentLoaded", () => {
    watchToasts();
    $$("dialog.dialog[data-open]").forEach((dialog) => openDialogs(dialog));
    $$(".flash .toast").forEach((item) => window.setTimeout(() => item.remove(), 6000));
  });
})();
