// nibble's web page: plain JavaScript, no build step, no dependencies; charts are inline SVG.
// Bytes come from the API; everything shown is GiB = 2^30 bytes (stated next to each figure).
"use strict";

const GIB = 2 ** 30;
const SVG_NS = "http://www.w3.org/2000/svg";
const TERMS = [
  // [key in a device object, legend label, CSS class]
  ["weights_bytes", "Weights", "seg-weights"],
  ["kv_cache_bytes", "KV cache", "seg-kv"],
  ["activation_bytes", "Activations", "seg-act"],
  ["overhead_bytes", "Runtime overhead", "seg-overhead"],
];
// Where each problem+json `errors[].field` is shown: the longest matching prefix wins.
const PLAN_FIELDS = {
  "model.preset": "model-preset", "model.hf_config": "model-config", "model.spec": "model-config",
  "hardware.device": "device", "hardware.memory_bytes": "memory-gib", "hardware.count": "count",
  "workload.context_length": "context", "workload.concurrent_sequences": "sequences", "workload": "context",
  "kv_cache": "kv-dtype", "weights": "group-size", "parallel": "count", "sweep": "context",
};
const UPLOAD_FIELDS = {
  "file": "q-file", "calibration": "q-calibration", "methods": "q-methods", "method": "q-methods",
  "group_size": "q-group-size", "symmetric": "q-methods",
};

const $ = (id) => document.getElementById(id);
const gib = (bytes) => (bytes / GIB).toFixed(2);
const thousands = (n) => Number(n).toLocaleString("en-US");

// --- API calls ----------------------------------------------------------------------------------

class ApiProblem extends Error {
  constructor(problem) {
    super(problem.detail || problem.title || "request failed");
    this.problem = problem;
  }
}

function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function problemOf(response) {
  let problem = null;
  try { problem = await response.json(); } catch (_) { /* not JSON: a proxy's page */ }
  if (!problem || typeof problem !== "object") {
    problem = { title: response.statusText || "Error", status: response.status, detail: `HTTP ${response.status}` };
  }
  return new ApiProblem(problem);
}

async function api(path, options = {}) {
  const headers = { ...authHeaders(), ...(options.headers || {}) };
  const response = await fetch(path, { ...options, headers });
  if (!response.ok) throw await problemOf(response);
  return response;
}

async function postJson(path, body) {
  const response = await api(path, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  return response.json();
}

// --- errors next to their fields ----------------------------------------------------------------

function clearErrors(form, formErrorId) {
  form.querySelectorAll(".field-error").forEach((p) => { p.textContent = ""; });
  form.querySelectorAll("[aria-invalid]").forEach((el) => el.removeAttribute("aria-invalid"));
  $(formErrorId).textContent = "";
}

function elementForField(field, table) {
  let best = null;
  for (const prefix of Object.keys(table)) {
    if ((field === prefix || field.startsWith(prefix + ".")) && (!best || prefix.length > best.length)) best = prefix;
  }
  return best ? $(table[best]) : null;
}

function showProblem(error, table, formErrorId) {
  const problem = error instanceof ApiProblem ? error.problem : { title: "Error", detail: String(error) };
  let placed = 0;
  for (const item of problem.errors || []) {
    let target = elementForField(item.field || "", table);
    if (target && target.closest("[hidden]")) target = null;
    if (!target) continue;
    const message = $(`err-${target.id}`);
    if (message) {
      message.textContent = item.message;
      target.setAttribute("aria-invalid", "true");
      placed += 1;
    }
  }
  const summary = `${problem.title || "Error"}${problem.status ? ` (${problem.status})` : ""}: ${problem.detail || ""}`;
  $(formErrorId).textContent = placed ? `${problem.title || "Error"}: see the highlighted field.` : summary;
}

// --- the plan form ------------------------------------------------------------------------------

function selected(name) {
  return document.querySelector(`input[name="${name}"]:checked`).value;
}

function syncSources() {
  const model = selected("model-source");
  document.querySelectorAll("[data-source]").forEach((el) => { el.hidden = el.dataset.source !== model; });
  const hardware = selected("hardware-source");
  document.querySelectorAll("[data-hardware]").forEach((el) => { el.hidden = el.dataset.hardware !== hardware; });
}

function integer(id) {
  const value = $(id).value.trim();
  return value === "" ? null : Number(value);
}

class FieldProblem extends Error {
  constructor(field, message) {
    super(message);
    this.problem = { title: "Invalid input", detail: message, errors: [{ field, message }] };
  }
}

function planBody() {
  const body = {};
  if (selected("model-source") === "preset") {
    body.model = { preset: $("model-preset").value };
  } else {
    let config;
    try { config = JSON.parse($("model-config").value); } catch (e) {
      throw new FieldProblem("model.hf_config", `not valid JSON: ${e.message}`);
    }
    body.model = { hf_config: config };
  }
  const count = integer("count");
  if (selected("hardware-source") === "device") {
    body.hardware = { device: $("device").value, count };
  } else {
    const memory = Number($("memory-gib").value);
    body.hardware = { memory_bytes: Math.round(memory * GIB), count };
  }
  body.workload = { context_length: integer("context"), concurrent_sequences: integer("sequences") };
  body.kv_cache = { dtype: $("kv-dtype").value };
  const group = $("group-size").value;
  body.weights = { format: "int4", group_size: group === "row" ? null : Number(group) };
  return body;
}

function sweepContexts(context, answer) {
  const points = new Set();
  const top = Math.max(131072, 2 * context);
  for (let c = 512; c <= top; c *= 2) points.add(c);
  points.add(context);
  for (const result of Object.values(answer.comparison)) {
    if (result.max_context_length) points.add(result.max_context_length);
  }
  return [...points].filter((c) => c >= 1 && c <= 16777216).sort((a, b) => a - b);
}

let planSequence = 0;
// The plan on screen: its answer, its sweep once in, and the group size it was asked with.  A resized window
// redraws it from here; it does not ask again (nor clear what the form shows).
let shown = null;

async function runPlan() {
  const form = $("plan-form");
  clearErrors(form, "plan-error");
  const ticket = ++planSequence;
  let body;
  try { body = planBody(); } catch (error) { showProblem(error, PLAN_FIELDS, "plan-error"); return; }
  const group = $("group-size").value;
  $("plan-button").disabled = true;
  try {
    const answer = await postJson("/v1/plan", body);
    if (ticket !== planSequence) return;  // a newer request is on its way
    shown = { answer, sweep: null, group };
    renderPlan(answer);
    const formats = Object.keys(answer.comparison);
    const sweepBody = { ...body, sweep: { context_lengths: sweepContexts(body.workload.context_length, answer),
                                          formats } };
    const sweep = await postJson("/v1/plan/sweep", sweepBody);
    if (ticket !== planSequence) return;
    shown.sweep = sweep;
    renderSweep(sweep, answer);
  } catch (error) {
    if (ticket === planSequence) showProblem(error, PLAN_FIELDS, "plan-error");
  } finally {
    if (ticket === planSequence) $("plan-button").disabled = false;
  }
}

// --- rendering the plan -------------------------------------------------------------------------

function redrawShown() {
  if (!shown) return;
  renderPlan(shown.answer);
  if (shown.sweep) renderSweep(shown.sweep, shown.answer);
}

function formatTitle(name, answer) {
  if (name === "int4") {
    const group = answer.comparison.int4 && shown.group;
    return `INT4 (group ${group === "row" ? "whole row" : group})`;
  }
  return `16-bit (${name})`;
}

function verdictSentence(name, result, answer) {
  const title = formatTitle(name, answer);
  if (result.fits) {
    const headroom = Math.min(...result.devices.map((d) => d.headroom_bytes));
    return `${title}: fits, with ${gib(headroom)} GiB to spare on the fullest device.`;
  }
  const worst = result.devices.reduce((a, b) => (b.headroom_bytes < a.headroom_bytes ? b : a));
  const more = result.min_devices ? ` It would fit on ${result.min_devices} devices.` : " It does not fit on any number of these devices.";
  return `${title}: does not fit; device ${worst.index} needs ${gib(worst.used_bytes)} GiB but only ` +
    `${gib(worst.usable_bytes)} GiB is usable.${more}`;
}

function renderPlan(answer) {
  $("plan-result").hidden = false;
  const verdict = $("verdict");
  verdict.replaceChildren();
  const entries = Object.entries(answer.comparison);
  const head = document.createElement("p");
  head.className = "verdict-head";
  const fitting = entries.filter(([, r]) => r.fits).map(([n]) => formatTitle(n, answer));
  head.textContent = fitting.length === entries.length ? `${answer.model} fits at 16-bit and at INT4.`
    : fitting.length ? `${answer.model} fits only at ${fitting.join(", ")}.`
      : `${answer.model} does not fit, even at INT4.`;
  verdict.append(head);
  for (const [name, result] of entries) {
    const line = document.createElement("p");
    line.className = result.fits ? "fits" : "no-fit";
    line.dataset.format = name;
    line.dataset.fits = String(result.fits);
    line.textContent = verdictSentence(name, result, answer);
    verdict.append(line);
  }
  const context = document.createElement("p");
  context.className = "note";
  context.textContent = `${thousands(answer.workload.context_length)} tokens × ${answer.workload.concurrent_sequences} ` +
    `sequence(s) on ${answer.hardware.count} × ${answer.hardware.name} (${gib(answer.hardware.capacity_bytes)} GiB each, ` +
    `${Math.round(answer.memory_utilization * 100)}% usable); KV cache ${answer.kv_cache.dtype}, ` +
    `${thousands(answer.kv_cache.bytes_per_token)} bytes per token.`;
  verdict.append(context);

  renderBars(answer);

  const tbody = $("limits").querySelector("tbody");
  tbody.replaceChildren();
  for (const [name, result] of entries) {
    const row = tbody.insertRow();
    const cells = [formatTitle(name, answer), gib(result.weights_bytes), result.bits_per_weight.toFixed(3),
      result.max_context_length ? thousands(result.max_context_length) : "none",
      thousands(result.max_concurrent_sequences), result.min_devices ?? "none"];
    cells.forEach((text, i) => {
      const cell = i === 0 ? document.createElement("th") : row.insertCell();
      if (i === 0) { cell.scope = "row"; row.append(cell); }
      cell.textContent = text;
    });
  }
  const warnings = $("warnings");
  warnings.replaceChildren(...answer.warnings.map((text) => {
    const item = document.createElement("li");
    item.textContent = text;
    return item;
  }));
}

function svgElement(tag, attributes = {}, text = null) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attributes)) el.setAttribute(key, String(value));
  if (text !== null) el.textContent = text;
  return el;
}

function niceStep(maxValue, ticks) {
  const raw = maxValue / ticks;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 2.5, 5, 10]) if (raw <= m * magnitude) return m * magnitude;
  return 10 * magnitude;
}

function deviceGroups(devices) {
  // Identical neighbouring devices (tensor-parallel ranks) share one bar.
  const groups = [];
  for (const device of devices) {
    const last = groups[groups.length - 1];
    const same = last && TERMS.every(([key]) => last.device[key] === device[key]) &&
      last.device.capacity_bytes === device.capacity_bytes;
    if (same) last.last = device.index; else groups.push({ device, first: device.index, last: device.index });
  }
  return groups;
}

function chartWidth(container) {
  return Math.max(300, Math.min(1100, container.clientWidth || 600));
}

function renderBars(answer) {
  const container = $("bars");
  const width = chartWidth(container);
  const height = 300;
  const margin = { top: 16, right: 12, bottom: 58, left: 52 };
  const entries = Object.entries(answer.comparison);
  const columns = entries.map(([name, result]) => ({ name, result, groups: deviceGroups(result.devices) }));
  const bars = columns.reduce((n, c) => n + c.groups.length, 0);
  let top = 0;
  for (const { result } of columns) {
    for (const d of result.devices) top = Math.max(top, d.capacity_bytes, d.used_bytes);
  }
  top *= 1.08;
  const plotHeight = height - margin.top - margin.bottom;
  const y = (bytes) => margin.top + plotHeight * (1 - bytes / top);
  const svg = svgElement("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", class: "bars",
    "aria-label": "Stacked bars of memory per device for each format" });
  const step = niceStep(top / GIB, 5);
  for (let v = 0; v * GIB <= top; v += step) {
    svg.append(svgElement("line", { x1: margin.left, x2: width - margin.right, y1: y(v * GIB), y2: y(v * GIB), class: "grid" }));
    svg.append(svgElement("text", { x: margin.left - 6, y: y(v * GIB) + 4, class: "tick", "text-anchor": "end" }, `${v}`));
  }
  svg.append(svgElement("text", { x: 12, y: margin.top + plotHeight / 2, class: "axis-label",
    transform: `rotate(-90 12 ${margin.top + plotHeight / 2})`, "text-anchor": "middle" }, "GiB"));
  const gap = 18;
  const slot = (width - margin.left - margin.right - gap * (columns.length - 1)) / Math.max(bars, 1);
  const barWidth = Math.min(90, slot * 0.7);
  let x = margin.left;
  for (const column of columns) {
    const start = x;
    for (const group of column.groups) {
      const d = group.device;
      const left = x + (slot - barWidth) / 2;
      const barGroup = svgElement("g", { class: "bar", "data-format": column.name, "data-fits": String(d.fits) });
      let base = 0;
      for (const [key, label, cls] of TERMS) {
        const value = d[key];
        if (value <= 0) continue;
        const rect = svgElement("rect", { x: left, width: barWidth, y: y(base + value), height: Math.max(0.5, y(base) - y(base + value)),
          class: `segment ${cls}`, "data-term": key });
        rect.append(svgElement("title", {}, `${label}: ${gib(value)} GiB`));
        barGroup.append(rect);
        base += value;
      }
      if (d.headroom_bytes > 0) {
        const rect = svgElement("rect", { x: left, width: barWidth, y: y(d.usable_bytes), height: y(base) - y(d.usable_bytes),
          class: "segment seg-headroom", "data-term": "headroom_bytes" });
        rect.append(svgElement("title", {}, `Headroom: ${gib(d.headroom_bytes)} GiB`));
        barGroup.append(rect);
      }
      barGroup.append(svgElement("line", { x1: left - 6, x2: left + barWidth + 6, y1: y(d.capacity_bytes), y2: y(d.capacity_bytes), class: "capacity" }));
      barGroup.append(svgElement("line", { x1: left - 6, x2: left + barWidth + 6, y1: y(d.usable_bytes), y2: y(d.usable_bytes), class: "usable" }));
      barGroup.append(svgElement("text", { x: left + barWidth / 2, y: Math.max(12, y(Math.max(d.used_bytes, d.capacity_bytes)) - 4), class: "value", "text-anchor": "middle" },
        `${gib(d.used_bytes)}`));
      const devices = group.first === group.last ? `device ${group.first}` : `devices ${group.first}–${group.last}`;
      barGroup.append(svgElement("text", { x: left + barWidth / 2, y: height - margin.bottom + 14, class: "tick", "text-anchor": "middle" }, devices));
      barGroup.append(svgElement("text", { x: left + barWidth / 2, y: height - margin.bottom + 28, class: d.fits ? "tick ok" : "tick bad", "text-anchor": "middle" },
        d.fits ? "fits" : "over"));
      svg.append(barGroup);
      x += slot;
    }
    svg.append(svgElement("text", { x: (start + x) / 2, y: height - 8, class: "column-label", "text-anchor": "middle" },
      formatTitle(column.name, answer)));
    x += gap;
  }
  container.replaceChildren(svg);
  const legend = $("bars-legend");
  const items = [...TERMS.map(([, label, cls]) => [label, cls]), ["Headroom (usable − used)", "seg-headroom"],
    ["Capacity", "key-capacity"], ["Usable (capacity × utilization)", "key-usable"]];
  legend.replaceChildren(...items.map(([label, cls]) => {
    const item = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = `swatch ${cls}`;
    item.append(swatch, document.createTextNode(label));
    return item;
  }));
}

function renderSweep(sweep, answer) {
  const container = $("sweep");
  const width = chartWidth(container);
  const height = 280;
  const margin = { top: 16, right: 16, bottom: 44, left: 52 };
  const series = new Map();
  for (const row of sweep.rows) {
    if (!series.has(row.format)) series.set(row.format, []);
    series.get(row.format).push(row);
  }
  const names = Object.keys(answer.comparison);
  const contexts = sweep.rows.map((r) => r.context_length);
  const minX = Math.log2(Math.min(...contexts));
  const maxX = Math.log2(Math.max(...contexts));
  const usable = sweep.rows[0].usable_bytes;
  const capacity = answer.devices[0].capacity_bytes;
  const top = Math.max(capacity, ...sweep.rows.map((r) => r.max_device_used_bytes)) * 1.05;
  const plotWidth = width - margin.left - margin.right;
  const plotHeight = height - margin.top - margin.bottom;
  const x = (context) => margin.left + plotWidth * ((Math.log2(context) - minX) / Math.max(maxX - minX, 1e-9));
  const y = (bytes) => margin.top + plotHeight * (1 - bytes / top);
  const svg = svgElement("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", class: "sweep",
    "aria-label": "Memory on the fullest device against context length" });
  const step = niceStep(top / GIB, 5);
  for (let v = 0; v * GIB <= top; v += step) {
    svg.append(svgElement("line", { x1: margin.left, x2: width - margin.right, y1: y(v * GIB), y2: y(v * GIB), class: "grid" }));
    svg.append(svgElement("text", { x: margin.left - 6, y: y(v * GIB) + 4, class: "tick", "text-anchor": "end" }, `${v}`));
  }
  for (let e = Math.ceil(minX); e <= maxX; e += (maxX - minX > 8 ? 2 : 1)) {
    const c = 2 ** e;
    svg.append(svgElement("text", { x: x(c), y: height - margin.bottom + 16, class: "tick", "text-anchor": "middle" },
      c >= 1024 ? `${c / 1024}K` : `${c}`));
  }
  svg.append(svgElement("text", { x: margin.left + plotWidth / 2, y: height - 6, class: "axis-label", "text-anchor": "middle" },
    "context length (tokens per sequence, log scale)"));
  svg.append(svgElement("text", { x: 12, y: margin.top + plotHeight / 2, class: "axis-label",
    transform: `rotate(-90 12 ${margin.top + plotHeight / 2})`, "text-anchor": "middle" }, "GiB"));
  svg.append(svgElement("line", { x1: margin.left, x2: width - margin.right, y1: y(capacity), y2: y(capacity), class: "capacity" }));
  svg.append(svgElement("line", { x1: margin.left, x2: width - margin.right, y1: y(usable), y2: y(usable), class: "usable" }));
  svg.append(svgElement("text", { x: width - margin.right - 4, y: y(usable) - 4, class: "tick", "text-anchor": "end" },
    `usable ${gib(usable)} GiB`));
  let index = 0;
  for (const [format, rows] of series) {
    const name = names[index] || format;
    const cls = `series-${index}`;
    const points = rows.map((r) => `${x(r.context_length).toFixed(1)},${y(r.max_device_used_bytes).toFixed(1)}`).join(" ");
    svg.append(svgElement("polyline", { points, class: `line ${cls}`, "data-format": name }));
    for (const r of rows) {
      const dot = svgElement("circle", { cx: x(r.context_length), cy: y(r.max_device_used_bytes), r: 3, class: `dot ${cls} ${r.fits ? "" : "over"}` });
      dot.append(svgElement("title", {}, `${formatTitle(name, answer)}, ${thousands(r.context_length)} tokens: ${gib(r.max_device_used_bytes)} GiB (${r.fits ? "fits" : "does not fit"})`));
      svg.append(dot);
    }
    const longest = answer.comparison[name] && answer.comparison[name].max_context_length;
    if (longest && Math.log2(longest) >= minX && Math.log2(longest) <= maxX) {
      svg.append(svgElement("line", { x1: x(longest), x2: x(longest), y1: margin.top, y2: height - margin.bottom, class: `marker ${cls}`, "data-format": name }));
      const rightHalf = x(longest) > margin.left + plotWidth / 2;
      svg.append(svgElement("text", { x: x(longest) + (rightHalf ? -4 : 4), y: margin.top + 40 + 14 * index,
        class: `marker-label ${cls}`, "text-anchor": rightHalf ? "end" : "start" },
        `${formatTitle(name, answer)} fits up to ${thousands(longest)} tokens`));
    }
    svg.append(svgElement("text", { x: margin.left + 6, y: margin.top + 12 + 14 * index, class: `series-label ${cls}` }, `— ${formatTitle(name, answer)}`));
    index += 1;
  }
  const current = Number(answer.workload.context_length);
  svg.append(svgElement("line", { x1: x(current), x2: x(current), y1: margin.top, y2: height - margin.bottom, class: "current" }));
  container.replaceChildren(svg);
}

// --- quantize panel -----------------------------------------------------------------------------

function chosenMethods() {
  return [...document.querySelectorAll('#q-methods input[name="method"]:checked')].map((el) => el.value);
}

function uploadForm(extra) {
  const file = $("q-file").files[0];
  if (!file) throw new FieldProblem("file", "choose a .npy or .safetensors file");
  const data = new FormData();
  data.append("file", file, file.name);
  const calibration = $("q-calibration").files[0];
  if (calibration) data.append("calibration", calibration, calibration.name);
  data.append("group_size", $("q-group-size").value);
  data.append("symmetric", $("q-symmetric").checked ? "true" : "false");
  for (const [key, value] of Object.entries(extra)) data.append(key, value);
  return data;
}

async function runCompare() {
  const form = $("quant-form");
  clearErrors(form, "quant-error");
  const button = $("compare-button");
  try {
    const methods = chosenMethods();
    if (!methods.length) throw new FieldProblem("methods", "choose at least one method");
    const data = uploadForm({ methods: methods.join(",") });
    button.disabled = true;
    button.textContent = "Comparing…";
    const report = await (await api("/v1/quantize/compare", { method: "POST", body: data })).json();
    renderCompare(report);
  } catch (error) {
    showProblem(error, UPLOAD_FIELDS, "quant-error");
  } finally {
    button.disabled = false;
    button.textContent = "Compare methods";
  }
}

function renderCompare(report) {
  $("compare-result").hidden = false;
  const tbody = $("compare-table").querySelector("tbody");
  tbody.replaceChildren();
  for (const tensor of report.tensors) {
    tensor.results.forEach((result, i) => {
      const row = tbody.insertRow();
      if (result.method === tensor.best_method) row.className = "best";
      const name = i === 0 ? `${tensor.name} [${tensor.shape.join(" × ")}]` : "";
      const cells = [name, result.method + (result.method === tensor.best_method ? " (best)" : ""),
        thousands(result.bytes.output), result.bits_per_weight.toFixed(3), result.quality.relative_error.toFixed(5),
        result.quality.sqnr_db.toFixed(2), result.quality.max_abs_error.toPrecision(4)];
      for (const text of cells) row.insertCell().textContent = text;
    });
  }
  $("passthrough").textContent = report.passthrough.length
    ? `Passed through unchanged: ${report.passthrough.map((p) => `${p.name} (${p.reason})`).join("; ")}.` : "";
  const select = $("d-method");
  const best = report.tensors.length ? report.tensors[0].best_method : report.methods[0];
  select.replaceChildren(...report.methods.map((method) => {
    const option = document.createElement("option");
    option.value = method;
    option.textContent = method === best ? `${method} (best on the first tensor)` : method;
    option.selected = method === best;
    return option;
  }));
}

async function runDownload() {
  const form = $("download-form");
  clearErrors(form, "download-error");
  const button = $("download-button");
  try {
    const output = $("d-output").value;
    const data = uploadForm({ method: $("d-method").value, output });
    button.disabled = true;
    const response = await api("/v1/quantize", { method: "POST", body: data });
    const blob = await response.blob();
    const disposition = response.headers.get("Content-Disposition") || "";
    const match = /filename="([^"]+)"/.exec(disposition);
    const link = $("download-link");
    if (link.href) URL.revokeObjectURL(link.href);
    link.href = URL.createObjectURL(blob);
    link.download = match ? match[1] : `quantized-${output}`;
    link.textContent = `Download ${link.download} (${thousands(blob.size)} bytes)`;
    link.hidden = false;
    link.click();
  } catch (error) {
    showProblem(error, UPLOAD_FIELDS, "download-error");
    // Upload fields live in the quantize form: show their messages there too.
    if (error.problem && (error.problem.errors || []).length) showProblem(error, UPLOAD_FIELDS, "quant-error");
  } finally {
    button.disabled = false;
  }
}

// --- start --------------------------------------------------------------------------------------

function fillSelect(select, items, value, label, preferred) {
  select.replaceChildren(...items.map((item) => {
    const option = document.createElement("option");
    option.value = value(item);
    option.textContent = label(item);
    return option;
  }));
  if (items.some((item) => value(item) === preferred)) select.value = preferred;
}

async function start() {
  const stored = sessionStorage.getItem("nibble-api-key");
  if (stored) $("api-key").value = stored;
  $("api-key").addEventListener("change", () => sessionStorage.setItem("nibble-api-key", $("api-key").value));
  document.querySelectorAll('input[name="model-source"], input[name="hardware-source"]').forEach((el) =>
    el.addEventListener("change", syncSources));
  syncSources();
  $("plan-form").addEventListener("submit", (event) => { event.preventDefault(); runPlan(); });
  $("quant-form").addEventListener("submit", (event) => { event.preventDefault(); runCompare(); });
  $("download-form").addEventListener("submit", (event) => { event.preventDefault(); runDownload(); });
  let resizeTimer = 0;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(redrawShown, 250);
  });
  try {
    const [models, devices] = await Promise.all([
      (await api("/v1/models")).json(), (await api("/v1/devices")).json()]);
    fillSelect($("model-preset"), models, (m) => m.id,
      (m) => `${m.display_name} (${(m.total_parameters / 1e9).toFixed(1)}B)`, "llama-3.1-70b");
    fillSelect($("device"), devices, (d) => d.id, (d) => `${d.name}, ${gib(d.memory_bytes)} GiB`, "h100-80gb");
    document.body.dataset.ready = "true";
  } catch (error) {
    showProblem(error, PLAN_FIELDS, "plan-error");
  }
}

document.addEventListener("DOMContentLoaded", start);
