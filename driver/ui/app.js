// The weir dashboard: four pages (overview with charts, epochs, executors, checkpoints) over the
// driver's JSON API (/api/v1/, docs/operations.md, Dashboard). It polls once a second and
// redraws what changed; it builds every element with textContent, never from HTML strings.
"use strict";

const POLL_MS = 1000;
const TOKEN_KEY = "weir-admin-token";

// ---- small helpers -------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    if (k === "class") node.className = v;
    else if (k === "onclick") node.addEventListener("click", v);
    else node.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

const fmt = {
  int(n) {
    return n === undefined || n === null ? "–" : Math.round(n).toLocaleString("en-US");
  },
  rate(n) {
    if (n === undefined || n === null) return "–";
    return n >= 100 ? fmt.int(n) : n.toFixed(1);
  },
  bytes(n) {
    if (n === undefined || n === null) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
  },
  ms(n) {
    if (n === undefined || n === null) return "–";
    return n < 10000 ? fmt.int(n) + " ms" : (n / 1000).toFixed(1) + " s";
  },
  span(ms) {
    if (ms === undefined || ms === null) return "–";
    const s = Math.abs(ms) / 1000;
    const sign = ms < 0 ? "-" : "";
    if (s < 60) return sign + s.toFixed(1) + " s";
    if (s < 3600) return sign + Math.floor(s / 60) + " min " + Math.round(s % 60) + " s";
    return sign + Math.floor(s / 3600) + " h " + Math.round((s % 3600) / 60) + " min";
  },
  time(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    return isNaN(d) ? iso : d.toLocaleTimeString("en-GB", { hour12: false });
  },
  clock(ms) {
    return new Date(ms).toLocaleTimeString("en-GB", { hour12: false });
  },
  ranges(ranges) {
    return (ranges || []).map((r) => r.end - r.start === 1 ? String(r.start) : r.start + "–" + (r.end - 1)).join(", ") || "–";
  },
};

function stateName(state) {
  return typeof state === "string" ? state : String(state);
}

// ---- the API -------------------------------------------------------------------------------

class Unauthorized extends Error {}

async function api(path) {
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = "Bearer " + token;
  let response;
  try {
    response = await fetch("/api/v1/" + path, { headers, cache: "no-store" });
  } catch (e) {
    // A token the browser cannot put in a header is refused before anything is sent.
    if (token && e instanceof TypeError && !/^[\x21-\x7e]+$/.test(token)) {
      throw new Unauthorized("That is not a valid token.");
    }
    throw e;
  }
  if (response.status === 401 || response.status === 403) {
    const body = await response.json().catch(() => ({}));
    throw new Unauthorized(body.error || response.statusText);
  }
  if (response.status === 404 && path === "progress") return null;
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new Error(path + ": " + (body.error || response.status + " " + response.statusText));
  }
  return response.json();
}

// ---- what the page knows -------------------------------------------------------------------

const store = {
  job: null,
  status: null,
  progress: null,
  samples: [],
  events: [],
  recent: [],
  executors: [],
  lastEpoch: undefined,
  expanded: new Set(),
};

async function refresh() {
  const page = currentPage();
  const status = await api("status");
  // A new driver (a restart, another job) keeps a timeline of its own from its start.
  if (store.status && status.runId !== store.status.runId) {
    store.job = null;
    store.samples = [];
    store.lastEpoch = undefined;
  }
  if (!store.job) store.job = await api("job");
  const [progress, timeline] = await Promise.all([
    api("progress"),
    api("timeline" + (store.lastEpoch === undefined ? "" : "?after=" + store.lastEpoch)),
  ]);
  store.status = status;
  store.progress = progress;
  for (const s of timeline.samples) {
    if (store.lastEpoch !== undefined && s.epoch <= store.lastEpoch) continue;
    store.samples.push(s);
    store.lastEpoch = s.epoch;
  }
  // An hour back from the newest sample: the driver's clock, not this browser's.
  const newest = store.samples.length ? store.samples[store.samples.length - 1].atMs : 0;
  const oldest = newest - 3600 * 1000;
  while (store.samples.length && store.samples[0].atMs < oldest) store.samples.shift();
  store.events = timeline.events;
  if (page === "epochs") store.recent = (await api("progress/recent")).progress || [];
  if (page === "executors") store.executors = (await api("executors")).executors || [];
}

// ---- pages ---------------------------------------------------------------------------------

function currentPage() {
  const page = (location.hash || "#/overview").replace(/^#\//, "");
  return ["overview", "epochs", "executors", "checkpoints"].includes(page) ? page : "overview";
}

// A figure with its label; `raw` (the number itself, for scripts and tests) goes to data-value.
function card(label, value, sub, field, wide, raw) {
  return el("div", { class: "card" + (wide ? " wide" : "") },
    el("div", { class: "label" }, label),
    el("div", { class: "value", "data-field": field, "data-value": raw }, value),
    sub ? el("div", { class: "sub" }, sub) : null);
}

function renderHeader() {
  const s = store.status;
  document.querySelector('[data-field="query-name"]').textContent = s ? s.name : "…";
  const pill = document.querySelector('[data-field="state"]');
  pill.textContent = s ? stateName(s.state) : "…";
  pill.className = "pill " + (s ? stateName(s.state) : "");
  document.querySelector('[data-field="updated"]').textContent = "updated " + fmt.clock(Date.now());
  for (const a of document.querySelectorAll("nav a")) {
    a.classList.toggle("current", a.dataset.page === currentPage());
  }
}

function backlogOf(progress) {
  if (!progress) return null;
  return (progress.sources || []).reduce((sum, s) => sum + (s.lag || 0), 0);
}

function overview(root) {
  const s = store.status;
  const p = store.progress;
  const watermark = s.watermark ? new Date(s.watermark).getTime() : null;
  const running = s.currentEpoch !== undefined && s.currentEpoch !== null;
  const lastDecision = p
    ? "epoch " + p.batchId + " at " + fmt.time(p.timestamp) +
      (p.sink && p.sink.deltaVersion !== undefined && p.sink.deltaVersion !== null ? ", Delta version " + p.sink.deltaVersion : "")
    : "none yet";
  const stateSub = stateName(s.state) === "FAILED" ? null : s.message;
  root.append(
    el("div", { class: "cards" },
      card("Query", s.name, "id " + s.id, "query", true),
      card("Status", stateName(s.state), stateSub, "status"),
      card("Trigger", s.trigger, "started " + fmt.time(s.startedAt), "trigger"),
      card("Epoch", p ? String(p.batchId) : "none yet",
        running ? "epoch " + s.currentEpoch + " running" : "the last committed; between epochs", "epoch", false,
        p ? p.batchId : null),
      card("Input rows, last epoch", p ? fmt.int(p.numInputRows) : "–",
        p ? fmt.rate(p.inputRowsPerSecond) + " rows/s in, " + fmt.rate(p.processedRowsPerSecond) + " rows/s processed" : null,
        "last-input-rows", false, p ? p.numInputRows : null),
      card("Watermark", s.watermark ? fmt.time(s.watermark) : "none yet",
        watermark ? fmt.span(Date.now() - watermark) + " behind wall time" : null, "watermark"),
      card("Executors", s.executorsActive + " of " + s.executorsTarget,
        s.executorsRegistered + " registered; target: " + (s.targetReason || "–"), "executors", false,
        s.executorsActive),
      card("Backlog", p ? fmt.int(backlogOf(p)) + " rows" : "–", "behind the source's end when the last epoch was planned", "backlog"),
      card("Last decision", lastDecision, null, "last-decision", true),
    ),
  );
  if (stateName(s.state) === "FAILED") {
    root.append(el("p", { class: "error", "data-field": "error" }, "The query failed: " + s.message));
  }
  root.append(el("h2", {}, "Tables"),
    el("ul", {}, store.job.tables.map((t) => el("li", {}, t.role + ": ", el("code", {}, t.url)))),
    el("p", { class: "muted" }, "Source: ", el("code", {}, store.job.source),
      " · checkpoint: ", el("code", {}, store.job.checkpointLocation)));
}

function overviewEvents(root) {
  root.append(el("h2", {}, "Events"), eventsList());
}

function eventsList() {
  if (!store.events.length) return el("p", { class: "muted" }, "No rescale, recovery or alert in the last hour.");
  return el("ul", { class: "events" }, store.events.slice().reverse().map((e) =>
    el("li", {}, el("span", { class: "muted" }, fmt.clock(e.atMs) + "  "), el("span", { class: "kind" }, e.kind), e.message)));
}

function failuresOf(epoch) {
  return store.events.filter((e) => e.epoch === epoch && e.kind === "executor_lost");
}

function epochs(root) {
  const head = ["Epoch", "Planned", "Input rows", "Rows/s", "Total", "Plan", "Restore", "Read", "Exchange",
    "State", "Stage", "Snapshot", "Decide", "Commit", "Late", "Dead letter", "Output", "Delta v.", "Runs"];
  const rows = store.recent.slice().reverse();
  const body = [];
  for (const p of rows) {
    const d = p.durationMs || {};
    const failures = failuresOf(p.batchId);
    const failed = p.runs > 1;
    body.push(el("tr", {
      class: "epoch" + (failed ? " failed" : ""), "data-epoch": p.batchId,
      onclick: () => { store.expanded.has(p.batchId) ? store.expanded.delete(p.batchId) : store.expanded.add(p.batchId); render(); },
    },
      el("td", {}, (store.expanded.has(p.batchId) ? "▾ " : "▸ ") + p.batchId),
      el("td", {}, fmt.time(p.timestamp)),
      el("td", {}, fmt.int(p.numInputRows)),
      el("td", {}, fmt.rate(p.processedRowsPerSecond)),
      el("td", {}, fmt.ms(d.total)), el("td", {}, fmt.ms(d.plan)), el("td", {}, fmt.ms(d.restore)),
      el("td", {}, fmt.ms(d.execute)),
      el("td", {}, fmt.ms(d.shuffle)), el("td", {}, fmt.ms(d.state)), el("td", {}, fmt.ms(d.stage)),
      el("td", {}, fmt.ms(d.checkpoint)), el("td", {}, fmt.ms(d.decide)),
      el("td", {}, fmt.ms((d.commit || 0) - (d.decide || 0))),
      el("td", {}, fmt.int(p.numLateRows)), el("td", {}, fmt.int(p.numDeadLetterRows)),
      el("td", {}, fmt.int(p.sink ? p.sink.numOutputRows : 0)),
      el("td", {}, p.sink && p.sink.deltaVersion !== null && p.sink.deltaVersion !== undefined ? String(p.sink.deltaVersion) : "–"),
      el("td", {}, String(p.runs))));
    if (store.expanded.has(p.batchId)) {
      body.push(el("tr", { class: "detail" }, el("td", { colspan: head.length },
        failed ? el("div", { class: "error" }, (p.runs - 1) + " failed run(s) before this one committed" +
          (failures.length ? ": " + failures.map((f) => f.message).join("; ") : "")) : null,
        executorTable(p.executors || []))));
    }
  }
  root.append(el("h2", {}, "Epochs, newest first (the driver keeps the last 100; click one for its executors)"),
    rows.length ? el("table", { "data-table": "epochs" }, el("tr", {}, head.map((h) => el("th", {}, h))), body)
      : el("p", { class: "muted" }, "No epoch has been committed since this driver started."));
}

function executorTable(executors) {
  const head = ["Executor", "Rows read", "Bytes read", "Shuffled out", "Shuffled in", "State written",
    "State rows", "Snapshot", "Uploaded", "Busy", "Read", "Aggregate", "Exchange", "State", "Stage", "Snapshot time", "Memory"];
  return el("table", {},
    el("tr", {}, head.map((h) => el("th", {}, h))),
    executors.map((x) => el("tr", {},
      el("td", {}, x.executorId), el("td", {}, fmt.int(x.inputRows)), el("td", {}, fmt.bytes(x.inputBytes)),
      el("td", {}, fmt.int(x.shuffleRowsSent)), el("td", {}, fmt.int(x.shuffleRowsReceived)),
      el("td", {}, fmt.int(x.stateRowsWritten)), el("td", {}, fmt.int(x.stateRows)),
      el("td", {}, fmt.bytes(x.snapshotBytes)), el("td", {}, fmt.bytes(x.snapshotUploadedBytes)),
      el("td", {}, fmt.ms(x.busyMs)), el("td", {}, fmt.ms(x.readMs)), el("td", {}, fmt.ms(x.aggregateMs)),
      el("td", {}, fmt.ms(x.exchangeMs)), el("td", {}, fmt.ms(x.stateMs)),
      el("td", {}, fmt.ms((x.emitMs || 0) - (x.stateMs || 0))), el("td", {}, fmt.ms(x.checkpointMs)),
      el("td", {}, x.memoryRssBytes ? fmt.bytes(x.memoryRssBytes) : "–"))));
}

function executors(root) {
  const head = ["Executor", "State", "Address", "Kafka partitions", "Key groups", "Busy, last epoch",
    "Rows read, last epoch", "State rows", "Memory", "Last heartbeat", "Registered"];
  root.append(el("h2", {}, "Executors"),
    el("table", { "data-table": "executors" },
      el("tr", {}, head.map((h) => el("th", { class: "text" }, h))),
      store.executors.map((x) => {
        const last = x.lastEpoch || {};
        return el("tr", { "data-executor": x.executorId },
          el("td", {}, x.executorId),
          el("td", { class: "text" }, el("span", { class: "pill " + stateName(x.state) }, stateName(x.state))),
          el("td", { class: "text" }, x.address || "–"),
          el("td", { class: "text" }, (x.partitions || []).join(", ") || "–"),
          el("td", { class: "text" }, x.keyGroupCount + " (" + fmt.ranges(x.keyGroups) + ")"),
          el("td", {}, fmt.ms(last.busyMs)),
          el("td", {}, fmt.int(last.inputRows)),
          el("td", {}, fmt.int(last.stateRows)),
          el("td", {}, last.memoryRssBytes ? fmt.bytes(last.memoryRssBytes) : "–"),
          el("td", {}, x.heartbeatAgeSeconds !== null && x.heartbeatAgeSeconds !== undefined
            ? x.heartbeatAgeSeconds.toFixed(1) + " s ago" : "–"),
          el("td", {}, fmt.time(x.registeredAt)));
      })));
}

function checkpoints(root) {
  const p = store.progress;
  const st = (p && p.state) || {};
  root.append(el("div", { class: "cards" },
    card("Location", store.job.checkpointLocation, null, "checkpoint-location", true),
    card("Retention", store.job.checkpointRetention + " epochs", "plans, decisions and state snapshots kept", "retention"),
    card("State snapshots", p ? fmt.bytes(st.checkpointBytes) : "–", "all executors, shared files included", "checkpoint-bytes"),
    card("Uploaded, last epoch", p ? fmt.bytes(st.checkpointUploadedBytes) : "–", null, "checkpoint-uploaded"),
    card("Key groups", String(store.job.keyGroups), null, "key-groups")));
  const head = ["Executor", "Key groups", "Snapshot", "Base taken after epoch", "Base", "Changelogs since", "Uploaded, last epoch", "Snapshot time", "Restored key groups", "Restored"];
  root.append(el("h2", {}, "Each executor's state snapshot after epoch " + (p ? p.batchId : "–")),
    el("table", { "data-table": "checkpoints" },
      el("tr", {}, head.map((h) => el("th", {}, h))),
      ((p && p.executors) || []).map((x) => el("tr", {},
        el("td", {}, x.executorId), el("td", {}, String(x.keyGroupCount)),
        el("td", {}, fmt.bytes(x.snapshotBytes)),
        el("td", {}, x.snapshotBaseEpoch === null || x.snapshotBaseEpoch === undefined ? "–" : String(x.snapshotBaseEpoch)),
        el("td", {}, fmt.bytes(x.snapshotBaseBytes)), el("td", {}, String(x.snapshotChangelogs)),
        el("td", {}, fmt.bytes(x.snapshotUploadedBytes)), el("td", {}, fmt.ms(x.checkpointMs)),
        el("td", {}, String(x.restoredKeyGroups)), el("td", {}, fmt.bytes(x.restoredBytes))))));
}

function checkpointCharts() {
  return [{
    id: "checkpoint-bytes", title: "State snapshots (bytes)", unit: "bytes",
    series: [{ label: "all executors", value: (s) => s.checkpointBytes }],
  }];
}

// ---- charts --------------------------------------------------------------------------------

const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04",
  "#db2777", "#4b5563", "#65a30d"];
const PHASES = ["plan", "restore", "read", "exchange", "state", "stage", "snapshot", "decide", "commit"];

function chartSpecs() {
  const partitions = new Set();
  for (const s of store.samples) for (const p of Object.keys(s.backlog || {})) partitions.add(p);
  const specs = [
    { id: "rates", title: "Input rate and process rate (rows/s)", unit: "rows/s", series: [
      { label: "input", value: (s) => s.inputRowsPerSecond },
      { label: "processed", value: (s) => s.processedRowsPerSecond }] },
    { id: "input-rows", title: "Input rows per epoch (rows)", unit: "rows", bars: true, series: [
      { label: "input rows", value: (s) => s.inputRows }] },
    { id: "phases", title: "Epoch duration by phase (ms, slowest executor)", unit: "ms", series:
      PHASES.map((ph) => ({ label: ph, value: (s) => s.phasesMs[ph] })) },
    { id: "watermark-gap", title: "Watermark gap to wall time (s)", unit: "s", series: [
      { label: "gap", value: (s) => s.watermarkGapMs === null ? null : s.watermarkGapMs / 1000 }] },
    { id: "late-dead", title: "Late and dead-lettered rows per epoch (rows)", unit: "rows", series: [
      { label: "late", value: (s) => s.lateRows },
      { label: "dead letter", value: (s) => s.deadLetterRows }] },
    { id: "state", title: "State: entries (rows) and size (bytes)", unit: "rows", unit2: "bytes", series: [
      { label: "entries", value: (s) => s.stateRows },
      { label: "bytes", value: (s) => s.stateBytes, scale: "bytes" }] },
    backlogSpec(partitions),
    { id: "executors", title: "Executors (count; rescales, recoveries and alerts marked)", unit: "executors", steps: true, series: [
      { label: "executors", value: (s) => s.executors }] },
  ];
  return specs;
}

// One line per partition, or the total when the driver keeps only that (many partitions).
function backlogSpec(partitions) {
  const spec = { id: "backlog", title: "Backlog per Kafka partition (records)", unit: "records" };
  if (partitions.size) {
    spec.series = [...partitions].sort((a, b) => a - b)
      .map((p) => ({ label: "partition " + p, value: (s) => (s.backlog || {})[p] ?? null }));
  } else if (store.samples.some((s) => s.backlogTotal > 0)) {
    spec.title = "Backlog, all Kafka partitions (records)";
    spec.series = [{ label: "all partitions", value: (s) => s.backlogTotal }];
  } else {
    spec.series = [];
    spec.empty = "No backlog: the source is not Kafka, or it has been read to its end in every sample.";
  }
  return spec;
}

const charts = new Map();

function axisValues(unit) {
  return (u, splits) => splits.map((v) => unit === "bytes" ? fmt.bytes(v) : v >= 1000 ? fmt.int(v) : String(+v.toFixed(2)));
}

// Vertical marks at the events' times, drawn over the plot.
function eventMarks(u) {
  const ctx = u.ctx;
  const [xmin, xmax] = [u.scales.x.min, u.scales.x.max];
  ctx.save();
  for (const e of store.events) {
    const t = e.atMs / 1000;
    if (t < xmin || t > xmax) continue;
    const x = Math.round(u.valToPos(t, "x", true));
    ctx.strokeStyle = e.kind === "rescaled" ? "#7c3aed" : e.kind === "recovered" ? "#16a34a" : "#dc2626";
    ctx.setLineDash([4, 3]);
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    ctx.moveTo(x, u.bbox.top);
    ctx.lineTo(x, u.bbox.top + u.bbox.height);
    ctx.stroke();
  }
  ctx.restore();
}

function chartData(spec) {
  const xs = store.samples.map((s) => s.atMs / 1000);
  return [xs, ...spec.series.map((sr) => store.samples.map((s) => {
    const v = sr.value(s);
    return v === undefined ? null : v;
  }))];
}

function chartBox(spec) {
  const box = el("div", { class: "chart", "data-chart": spec.id, "data-points": String(store.samples.length) },
    el("h3", {}, spec.title));
  if (spec.empty || !store.samples.length) {
    box.append(el("div", { class: "empty" }, spec.empty || "No epoch committed in the last hour yet."));
    return box;
  }
  // Two charts a row on a laptop screen, one on a narrow one; the box's padding is 8 px a side.
  const main = document.querySelector("main").clientWidth - 48;
  const width = Math.max(480, Math.floor((main >= 1260 ? (main - 12) / 2 : main) - 18));
  // Counts, sizes and times read against zero.
  const fromZero = { range: (u, min, max) => [Math.min(0, min ?? 0), max > 0 ? max * 1.08 : 1] };
  const scales = { x: { time: true }, y: fromZero };
  const axes = [{}, { label: spec.unit, values: axisValues(spec.unit), size: 70 }];
  if (spec.unit2) {
    scales[spec.unit2] = fromZero;
    axes.push({ scale: spec.unit2, side: 1, label: spec.unit2, values: axisValues(spec.unit2), size: 70, grid: { show: false } });
  }
  const opts = {
    width, height: 220,
    scales,
    axes,
    series: [{}, ...spec.series.map((sr, i) => {
      // uPlot takes a key set to undefined as set: only the options that apply are given.
      const series = {
        label: sr.label,
        stroke: PALETTE[i % PALETTE.length],
        width: 1.5,
        points: { show: store.samples.length < 60 },
      };
      if (sr.scale) series.scale = sr.scale;
      if (spec.bars) {
        series.paths = uPlot.paths.bars({ size: [0.8, 12] });
        series.fill = PALETTE[i % PALETTE.length] + "55";
      }
      if (spec.steps) series.paths = uPlot.paths.stepped({ align: 1 });
      return series;
    })],
    hooks: { draw: [eventMarks] },
    legend: { live: true },
  };
  const plot = new uPlot(opts, chartData(spec), box);
  charts.set(spec.id, plot);
  return box;
}

// ---- rendering and the loop ----------------------------------------------------------------

const PAGES = {
  overview: { top: overview, charts: chartSpecs, bottom: overviewEvents },
  epochs: { top: epochs },
  executors: { top: executors },
  checkpoints: { top: checkpoints, charts: checkpointCharts },
};

// What is on screen: the page, its parts, and which charts (rebuilt only when their set or
// series change; otherwise they take the new data in place, keeping the reader's hover).
let shown = { page: null, chartsKey: "" };

function destroyCharts() {
  for (const plot of charts.values()) plot.destroy();
  charts.clear();
}

function render() {
  renderHeader();
  const root = document.getElementById("page");
  if (!store.status || !store.job) return;
  const page = currentPage();
  const parts = PAGES[page];
  if (shown.page !== page) {
    destroyCharts();
    const top = el("div");
    const chartsHost = el("div", { class: "charts" });
    const bottom = el("div");
    root.replaceChildren(top, parts.charts ? el("h2", {}, "The last hour") : "",
      parts.charts ? chartsHost : "", bottom);
    shown = { page, top, chartsHost, bottom, chartsKey: "" };
  }
  const scrollY = window.scrollY;
  shown.top.replaceChildren();
  parts.top(shown.top);
  if (parts.charts) {
    const specs = parts.charts();
    const key = specs.map((s) => s.id + ":" + s.series.map((sr) => sr.label).join("/") + ":" + (s.empty ? 0 : 1)).join(",") +
      "|" + (store.samples.length ? 1 : 0);
    if (key !== shown.chartsKey) {
      destroyCharts();
      shown.chartsHost.replaceChildren(...specs.map(chartBox));
      shown.chartsKey = key;
    } else {
      for (const spec of specs) {
        const plot = charts.get(spec.id);
        if (!plot) continue;
        plot.setData(chartData(spec));
        plot.root.parentElement.dataset.points = String(store.samples.length);
      }
    }
  }
  shown.bottom.replaceChildren();
  if (parts.bottom) parts.bottom(shown.bottom);
  window.scrollTo(0, scrollY);
}

window.addEventListener("resize", () => {
  shown.chartsKey = "";
  if (document.getElementById("login").hidden) render();
});

function showBanner(message) {
  const banner = document.getElementById("banner");
  banner.hidden = !message;
  banner.textContent = message || "";
}

function showLogin(message) {
  document.getElementById("login").hidden = false;
  destroyCharts();
  document.getElementById("page").replaceChildren();
  shown = { page: null, chartsKey: "" };
  document.getElementById("login-error").textContent = message || "";
}

let timer = null;
let polling = false;
let again = false;

// One poll at a time: a page change or a token given while one runs asks for another after it.
async function tick() {
  clearTimeout(timer);
  if (polling) {
    again = true;
    return;
  }
  polling = true;
  try {
    await poll();
  } finally {
    polling = false;
  }
  if (again) {
    again = false;
    tick();
  }
}

async function poll() {
  try {
    if (!sessionStorage.getItem(TOKEN_KEY) && (await api("access")).tokenRequired) {
      showLogin("");
      return; // Polling starts once a token is given.
    }
    await refresh();
    document.getElementById("login").hidden = true;
    showBanner(null);
    render();
  } catch (e) {
    if (e instanceof Unauthorized) {
      showLogin(sessionStorage.getItem(TOKEN_KEY) ? e.message : "");
      return; // Polling resumes once a token is given.
    }
    showBanner("Cannot reach the driver: " + e.message + " (retrying)");
  }
  clearTimeout(timer);
  timer = setTimeout(tick, POLL_MS);
}

document.getElementById("login").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value.trim());
  tick();
});
window.addEventListener("hashchange", () => tick());
tick();
