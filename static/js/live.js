// Live board: other people's changes arrive over Server-Sent Events (the htmx SSE extension)
// and only the columns they touched are fetched again. The user's scroll position, open
// dialog, focus and a drag in progress are left alone; a change made in this tab is skipped,
// since this tab has already drawn it (the stream, given this tab's id, marks those `mine`; the
// id itself is never sent to anyone). When no stream can be opened, the page polls instead.
"use strict";

(() => {
  const live = document.getElementById("live");
  if (!live) return;

  const POLL_EVERY = 5000;
  const HIGHLIGHT_FOR = 4000;
  const clientId = randomId();
  let last = Number(live.dataset.last) || 0;
  let pending = [];
  let flushTimer = null;
  let pollTimer = null;
  let failures = 0;
  const listening = new WeakSet();

  function randomId() {
    const bytes = new Uint8Array(12);
    window.crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function status(text, state) {
    const box = document.getElementById("live-status");
    if (!box) return;
    box.textContent = text;
    box.dataset.state = state;
  }

  // Every request from this tab names it, so its own changes come back marked as such.
  document.addEventListener("htmx:configRequest", (event) => {
    event.detail.headers["X-Flux-Client"] = clientId;
  });

  // A new EventSource (first connection, or the extension's reconnect after the server went
  // away) starts after the last event this page has seen; the browser's own reconnects send
  // Last-Event-ID by themselves.
  htmx.createEventSource = (url) => {
    const target = new URL(url, window.location.href);
    target.searchParams.set("last", String(last));
    target.searchParams.set("client", clientId);
    return new EventSource(target.toString(), { withCredentials: true });
  };

  document.addEventListener("htmx:sseOpen", (event) => {
    const source = event.detail.source;
    failures = 0;
    stopPolling();
    status("Live", "live");
    if (listening.has(source)) return;
    listening.add(source);
    source.addEventListener("change", (message) => receive(JSON.parse(message.data)));
    source.addEventListener("reload", (message) => {
      last = Math.max(last, JSON.parse(message.data).last || 0);
      live.dataset.last = String(last);
      refresh(null);
    });
    source.addEventListener("revoked", () => {
      source.close();
      window.location.assign("/");
    });
  });

  document.addEventListener("htmx:sseError", () => {
    failures += 1;
    status("Reconnecting…", "down");
    if (failures >= 3) startPolling();
  });

  // The avatars list everyone viewing the board; this page shows only the others.
  document.addEventListener("htmx:sseMessage", (event) => {
    if (event.target.id !== "presence") return;
    event.target.querySelectorAll(`[data-user="${CSS.escape(live.dataset.user)}"]`)
      .forEach((avatar) => avatar.remove());
  });

  function receive(change) {
    if (change.id > last) last = change.id;
    live.dataset.last = String(last);
    if (change.mine) return;
    pending.push(change);
    schedule(120);
  }

  function schedule(delay) {
    if (flushTimer) return;
    flushTimer = window.setTimeout(flush, delay);
  }

  // A drag or a move in flight owns the board: redraw once it is over.
  function boardBusy() {
    return Boolean(document.querySelector("#board.busy, .card-chosen, .sortable-fallback"));
  }

  function flush() {
    flushTimer = null;
    if (!pending.length) return;
    if (boardBusy()) {
      schedule(250);
      return;
    }
    const changes = pending;
    pending = [];
    const whole = changes.some((change) => change.columns === null);
    const ids = new Set(changes.flatMap((change) => change.columns || []));
    if (whole || ids.size) {
      refresh(whole ? null : [...ids]).then(() => highlight(changes));
    } else {
      highlight(changes);
    }
    for (const change of changes.slice(-3)) toast(change.text);
    noteOpenDialog(changes);
  }

  // A move started by this page while a redraw was on its way makes that redraw stale.
  let movesStarted = 0;
  document.addEventListener("flux:move-start", () => { movesStarted += 1; });

  // Fresh copies of the columns, swapped out of band, with the page's filters kept. Drawn
  // only when no move of this page's is in flight or began meanwhile; else asked again.
  function refresh(columnIds) {
    const url = new URL(live.dataset.columnsUrl, window.location.href);
    new URLSearchParams(window.location.search).forEach((value, key) => {
      if (key !== "ids") url.searchParams.set(key, value);
    });
    if (columnIds) url.searchParams.set("ids", columnIds.join(","));
    const movesBefore = movesStarted;
    let drawn = false;
    return htmx
      .ajax("GET", url.pathname + url.search, {
        source: live,
        handler: (elt, info) => {
          if (info.xhr.status !== 200) {
            drawn = true; // gone or refused: nothing to draw, and nothing to ask again
            return;
          }
          if (movesStarted !== movesBefore || boardBusy()) return;
          const lists = keepScroll();
          htmx.swap(live, info.xhr.responseText, { swapStyle: "none" });
          restoreScroll(lists);
          drawn = true;
        },
      })
      .then(() => {
        if (!drawn) return waitUntilIdle().then(() => refresh(columnIds));
        return undefined;
      })
      .catch(() => {});
  }

  function waitUntilIdle() {
    return new Promise((resolve) => {
      const check = () => (boardBusy() ? window.setTimeout(check, 100) : resolve());
      check();
    });
  }

  function keepScroll() {
    const kept = new Map();
    document.querySelectorAll("#board .cards").forEach((list) => {
      if (list.scrollTop) kept.set(list.dataset.column, list.scrollTop);
    });
    return kept;
  }

  function restoreScroll(kept) {
    kept.forEach((top, column) => {
      const list = document.querySelector(`#board .cards[data-column="${CSS.escape(column)}"]`);
      if (list) list.scrollTop = top;
    });
  }

  function highlight(changes) {
    for (const change of changes) {
      if (!change.card) continue;
      const card = document.getElementById(`card-${change.card}`);
      if (!card) continue;
      card.classList.add("live-changed");
      card.dataset.changedBy = change.actor;
      window.setTimeout(() => {
        card.classList.remove("live-changed");
        delete card.dataset.changedBy;
      }, HIGHLIGHT_FOR);
    }
  }

  function toast(text) {
    const box = document.getElementById("toasts");
    if (!box || !text) return;
    const item = document.createElement("p");
    item.className = "toast toast-live";
    item.setAttribute("role", "status");
    item.textContent = text;
    box.append(item);
  }

  // Someone else changed the card whose dialog is open: say so there, and leave the form alone.
  function noteOpenDialog(changes) {
    const dialog = document.getElementById("card-dialog");
    if (!dialog) return;
    const card = document.getElementById(`card-${dialog.dataset.cardId}`);
    const mine = changes.filter((change) => String(change.card) === dialog.dataset.cardId);
    if (!mine.length || !dialog.dataset.cardId) return;
    let note = dialog.querySelector(".live-note");
    if (!note) {
      note = document.createElement("p");
      note.className = "live-note";
      note.setAttribute("role", "status");
      dialog.querySelector(".dialog-head")?.after(note);
    }
    note.textContent = `${mine[mine.length - 1].text}. Close and reopen the card to see it.`;
    if (card) card.classList.add("live-changed");
  }

  // The fallback: ask "anything new since event N?" until a stream opens again.
  function startPolling() {
    if (pollTimer) return;
    status("Live (polling)", "polling");
    pollTimer = window.setInterval(poll, POLL_EVERY);
    poll();
  }

  function stopPolling() {
    if (!pollTimer) return;
    window.clearInterval(pollTimer);
    pollTimer = null;
  }

  function poll() {
    const url = new URL(live.dataset.changesUrl, window.location.href);
    url.searchParams.set("after", String(last));
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then((response) => (response.ok ? response.json() : Promise.reject(response.status)))
      .then((body) => {
        if (body.reload) {
          last = body.last;
          refresh(null);
          return;
        }
        body.changes.forEach(receive);
        last = Math.max(last, body.last);
      })
      .catch(() => status("Offline", "down"));
  }
})();
