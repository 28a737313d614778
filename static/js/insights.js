// The insights charts. Chart.js draws what the page's JSON data block (json_script) holds;
// the tables under each chart carry the same numbers for screen readers and copying.
// Served from 'self' under the CSP: no inline scripts, and colours come from flux.css's
// custom properties, so dark mode follows the stylesheet.
"use strict";

(() => {
  function readData() {
    const source = document.getElementById("insights-data");
    return source ? JSON.parse(source.textContent) : null;
  }

  const css = () => getComputedStyle(document.documentElement);
  const colour = (name, fallback) => css().getPropertyValue(name).trim() || fallback;
  const stageColour = (stage) => colour(`--stage-${stage}`, "#64748b");

  // "#rrggbb" at some opacity, for fills under lines and crowded dots.
  function translucent(hex, alpha) {
    const match = /^#([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})$/i.exec(hex);
    if (!match) return hex;
    const [r, g, b] = match.slice(1).map((part) => parseInt(part, 16));
    return `rgba(${r}, ${g}, ${b}, ${alpha})`;
  }

  // Failed deployments are hatched as well as red, so they read without colour too.
  function hatch(hex) {
    const tile = document.createElement("canvas");
    tile.width = tile.height = 8;
    const pen = tile.getContext("2d");
    pen.fillStyle = translucent(hex, 0.35);
    pen.fillRect(0, 0, 8, 8);
    pen.strokeStyle = hex;
    pen.lineWidth = 2;
    pen.beginPath();
    pen.moveTo(-2, 2);
    pen.lineTo(2, -2);
    pen.moveTo(0, 8);
    pen.lineTo(8, 0);
    pen.moveTo(6, 10);
    pen.lineTo(10, 6);
    pen.stroke();
    return pen.createPattern(tile, "repeat");
  }

  const isoDay = (ms) => new Date(ms).toISOString().slice(0, 10);
  const isoMinute = (ms) => new Date(ms).toISOString().slice(0, 16).replace("T", " ");
  // A duration already in its figure's unit (the page picks one per figure: data.*.unit),
  // written as the page writes it, so the chart and the cards agree.
  const inUnit = (value, unit) => (unit.symbol === "min" ? `${value.toFixed(0)} min` : `${value.toFixed(1)} ${unit.symbol}`);

  // A stable sideways offset per card, so dots of one stage spread out instead of piling up.
  function jitter(text) {
    let hash = 0;
    for (const char of text) hash = (hash * 31 + char.charCodeAt(0)) | 0;
    return ((Math.abs(hash) % 1000) / 1000 - 0.5) * 0.6;
  }

  function frequency(canvas, data) {
    const { weeks, succeeded, failed, rolledBack } = data.frequency;
    const danger = colour("--danger", "#b91c1c");
    const warn = colour("--warn", "#b45309");
    return new Chart(canvas, {
      type: "bar",
      data: {
        labels: weeks,
        datasets: [
          { label: "Succeeded", data: succeeded, backgroundColor: stageColour("deployed") },
          { label: "Rolled back", data: rolledBack, backgroundColor: hatch(warn), borderColor: warn, borderWidth: 1 },
          { label: "Failed", data: failed, backgroundColor: hatch(danger), borderColor: danger, borderWidth: 1 },
        ],
      },
      options: {
        interaction: { mode: "index", intersect: false },
        scales: {
          x: { stacked: true, title: { display: true, text: "Week of (Monday, UTC)" }, ticks: { maxTicksLimit: 14 } },
          y: { stacked: true, beginAtZero: true, ticks: { precision: 0 }, title: { display: true, text: "Deployments" } },
        },
      },
    });
  }

  function cycle(canvas, data) {
    const { points, p50, p85, unit } = data.cycle;
    const { startMs, endMs } = data.window;
    const line = (label, value, dash, hex) => ({
      type: "line",
      label: `${label} ${inUnit(value, unit)}`,
      data: [{ x: startMs, y: value }, { x: endMs, y: value }],
      borderColor: hex,
      borderDash: dash,
      borderWidth: 1.5,
      pointRadius: 0,
      pointHitRadius: 0,
    });
    const datasets = [{
      label: "A card deployed",
      data: points,
      backgroundColor: translucent(stageColour("in_progress"), 0.55),
      borderColor: stageColour("in_progress"),
      pointRadius: 3.5,
      pointHoverRadius: 5,
    }];
    if (p50 !== null) datasets.push(line("p50", p50, [], colour("--ink", "#1f2933")));
    if (p85 !== null) datasets.push(line("p85", p85, [6, 4], colour("--warn", "#b45309")));
    return new Chart(canvas, {
      type: "scatter",
      data: { datasets },
      options: {
        scales: {
          x: {
            type: "linear",
            min: startMs,
            max: endMs,
            ticks: { callback: (value) => isoDay(value), maxTicksLimit: 8 },
            title: { display: true, text: "Deployed (UTC)" },
          },
          y: { beginAtZero: true, title: { display: true, text: `Cycle time (${unit.name})` } },
        },
        plugins: {
          tooltip: {
            callbacks: {
              label: (item) => item.raw.ref
                ? `${item.raw.ref} (${item.raw.version || "manual move"}): ${inUnit(item.raw.y, unit)}, deployed ${isoMinute(item.raw.x)}`
                : item.dataset.label,
            },
          },
        },
      },
    });
  }

  function flow(canvas, data) {
    const names = Object.fromEntries(data.stages.map((stage) => [stage.key, stage.label]));
    // Done at the bottom, as a cumulative flow diagram is read.
    const order = ["deployed", "staging", "review", "in_progress", "todo"];
    return new Chart(canvas, {
      type: "line",
      data: {
        labels: data.flow.days,
        datasets: order.map((stage, index) => ({
          label: names[stage],
          data: data.flow.series[stage],
          fill: index === 0 ? "origin" : "-1",
          backgroundColor: translucent(stageColour(stage), 0.5),
          borderColor: stageColour(stage),
          borderWidth: 1,
          pointRadius: 0,
          pointHitRadius: 6,
        })),
      },
      options: {
        interaction: { mode: "index", intersect: false },
        scales: {
          x: { ticks: { maxTicksLimit: 10 }, title: { display: true, text: "Day (UTC)" } },
          y: { stacked: true, beginAtZero: true, ticks: { precision: 0 }, title: { display: true, text: "Open cards" } },
        },
        plugins: { legend: { reverse: true }, tooltip: { reverse: true } },
      },
    });
  }

  function aging(canvas, data) {
    const { stages, unit } = data.aging;
    return new Chart(canvas, {
      type: "scatter",
      data: {
        datasets: stages.map((stage, index) => ({
          label: stage.label,
          data: data.aging.points
            .filter((point) => point.stage === stage.key)
            .map((point) => ({ x: index + jitter(point.ref), y: point.y, ref: point.ref, column: point.column })),
          backgroundColor: translucent(stageColour(stage.key), 0.7),
          borderColor: stageColour(stage.key),
          pointRadius: 4,
          pointHoverRadius: 6,
        })),
      },
      options: {
        scales: {
          x: {
            type: "linear",
            min: -0.5,
            max: stages.length - 0.5,
            afterBuildTicks: (axis) => { axis.ticks = stages.map((_, index) => ({ value: index })); },
            ticks: { callback: (value) => stages[value]?.label ?? "" },
            grid: { display: false },
          },
          y: { beginAtZero: true, title: { display: true, text: `Time in its column (${unit.name})` } },
        },
        plugins: {
          tooltip: {
            callbacks: { label: (item) => `${item.raw.ref} in ${item.raw.column}: ${inUnit(item.raw.y, unit)}` },
          },
        },
      },
    });
  }

  const CHARTS = { frequency, cycle, flow, aging };

  function draw() {
    const data = readData();
    if (!data || !window.Chart) return;
    Chart.defaults.color = colour("--muted", "#5f6b7a");
    Chart.defaults.borderColor = colour("--line", "#dde1e7");
    Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
    Chart.defaults.maintainAspectRatio = false;
    if (window.matchMedia("(prefers-reduced-motion: reduce)").matches) Chart.defaults.animation = false;
    for (const canvas of document.querySelectorAll("canvas[data-chart]")) {
      const make = CHARTS[canvas.dataset.chart];
      if (make && !Chart.getChart(canvas)) make(canvas, data);
    }
  }

  // Redraw in the other palette when the reader switches between light and dark.
  window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => {
    for (const canvas of document.querySelectorAll("canvas[data-chart]")) Chart.getChart(canvas)?.destroy();
    draw();
  });

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", draw);
  else draw();
})();
