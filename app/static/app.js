// nibble's web page: plain JavaScript, no build step, no dependencies; charts are inline SVG.
// Bytes come from the API; sizes are shown in GiB (2^30 bytes) or GB (10^9), as the "Sizes in" switch says.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const UNITS = { GiB: { bytes: 2 ** 30, definition: "1 GiB = 2^30 bytes" }, GB: { bytes: 1e9, definition: "1 GB = 10^9 bytes" } };
// Human units in, as the CLI reads them (app/units.py): decimal kB..TB, binary KiB..TiB; tokens take k = 1024.
const BYTE_UNITS = { "": null, b: 1, kb: 1e3, mb: 1e6, gb: 1e9, tb: 1e12, kib: 2 ** 10, mib: 2 ** 20, gib: 2 ** 30, tib: 2 ** 40 };
const TOKEN_UNITS = { "": 1, k: 1024, m: 1024 * 1024 };
const TERMS = [
  // [key in a device object, label, CSS class]
  ["weights_bytes", "Weights", "seg-weights"],
  ["kv_cache_bytes", "KV cache", "seg-kv"],
  ["activation_bytes", "Activations", "seg-act"],
  ["overhead_bytes", "Runtime overhead", "seg-overhead"],
];
// Where each problem+json `errors[].field` is shown: the longest matching prefix wins.
const PLAN_FIELDS = {
  "model.preset": "model-preset", "model.hf_config": "model-config", "model.spec": "model-config",
  "hardware.device": "device", "hardware.memory_bytes": "memory", "hardware.compute_units": "compute-units",
  "hardware.count": "count", "hardware": "count",
  "workload.context_length": "context", "workload.concurrent_sequences": "sequences", "workload": "context",
  "kv_cache": "kv-dtype", "weights": "group-size", "parallel.tensor": "tensor", "parallel.pipeline": "pipeline",
  "parallel": "count", "runtime.memory_utilization": "utilization", "runtime.engine_version": "engine-version",
  "sweep": "context",
};
const UPLOAD_FIELDS = {
  "file": "q-file", "calibration": "q-calibration", "methods": "q-methods", "method": "q-methods",
  "group_size": "q-group-size", "symmetric": "q-methods", "importance": "q-importance", "bits_per_weight": "q-bits",
};
// The inputs a plan link carries, by query key (the pasted config travels in the fragment).
const STATE_INPUTS = {
  model: "model-preset", device: "device", memory: "memory", sms: "compute-units", count: "count", tp: "tensor",
  pp: "pipeline", util: "utilization", ctx: "context", seq: "sequences", kv: "kv-dtype", group: "group-size",
  engine: "engine-version",
};
const MAX_CONFIG_IN_LINK = 16000;  // characters of a pasted config a link may carry

const $ = (id) => document.getElementById(id);
const thousands = (n) => Number(n).toLocaleString("en-US");
let unit = "GiB";
const size = (bytes) => (bytes / UNITS[unit].bytes).toFixed(2);
const sized = (bytes) => `${size(bytes)} ${unit}`;

// --- human units in -----------------------------------------------------------------------------

const NUMBER = /^\s*(-?(?:\d+(?:\.\d*)?|\.\d+))\s*([A-Za-z]*)\s*$/;

function parseSize(text) {
  // Bytes for "80GiB", "80GB", "1.5TiB"; a bare number is GiB (the label says so).  null if unreadable.
  const match = NUMBER.exec(text);
  if (!match || !(match[2].toLowerCase() in BYTE_UNITS)) return null;
  const scale = BYTE_UNITS[match[2].toLowerCase()] ?? 2 ** 30;
  return Math.round(Number(match[1]) * scale);
}

function parseTokens(text) {
  // Tokens for "4096", "8k" (8,192), "128K" (131,072), "1M"; null if unreadable or not whole.
  const match = NUMBER.exec(text);
  if (!match || !(match[2].toLowerCase() in TOKEN_UNITS)) return null;
  const value = Number(match[1]) * TOKEN_UNITS[match[2].toLowerCase()];
  return Number.isInteger(value) ? value : null;
}

// --- API calls ----------------------------------------------------------------------------------

class ApiProblem extends Error {
  constructor(problem) {
    super(problem.detail || problem.title || "request failed");
    this.problem = problem;
  }
}

class FieldProblem extends Error {
  // A problem found by the page itself, in the same shape as the API's, so it lands on its field too.
  constructor(field, message) {
    super(message);
    this.problem = { title: "Invalid input", detail: message, errors: [{ field, message }] };
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
    problem = { title: response.statusText || "Request failed", status: response.status, detail: `HTTP ${response.status}` };
  }
  return new ApiProblem(problem);
}

async function api(path, options = {}) {
  const headers = { ...authHeaders(), ...(options.headers || {}) };
  let response;
  try {
    response = await fetch(path, { ...options, headers });
  } catch (error) {
    throw new ApiProblem({ title: "Server unreachable", detail: `the request to ${path} failed (${error.message})` });
  }
  if (!response.ok) throw await problemOf(response);
  return response;
}

async function postJson(path, body) {
  const response = await api(path, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  return response.json();
}

async function postPlan(path, body) {
  // A plan carrying a checkpoint's headers goes as the multipart form (app/plan_form.py): the request's JSON
  // beside one part per file holding its header bytes as read, and the index; base64 in a JSON body would pass
  // the server's 1 MiB JSON limit for a large checkpoint (DeepSeek-V3's headers and index: 21.6 MB).
  if (!body.checkpoint) return postJson(path, body);
  const { checkpoint, ...request } = body;
  const form = new FormData();
  form.append("request", JSON.stringify(request));
  for (const header of checkpoint.files) form.append("header", new Blob([header.bytes]), header.file);
  if (checkpoint.index) form.append("index", new Blob([checkpoint.index]), "model.safetensors.index.json");
  const response = await api(path, { method: "POST", body: form });
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
    if ((field === prefix || field.startsWith(prefix + ".") || field.startsWith(prefix + "["))
        && (!best || prefix.length > best.length)) best = prefix;
  }
  return best ? $(table[best]) : null;
}

// What the user typed in each unit-bearing input when the request left, so API messages speak their units.
let typedAtSubmit = {};

function inUserTerms(message, target) {
  // "memory_bytes=-85899345920: must be positive" -> "“-80GiB”: must be positive"; byte counts in the unit shown.
  // A pasted config holds many keys: its messages keep the key they name ("num_hidden_layers=None: required ...").
  let text = message;
  const match = target.id === "model-config" ? null : /^[\w.[\]]+=\S*: (.*)$/s.exec(text);
  const typed = typedAtSubmit[target.id];
  if (match) text = typed !== undefined ? `“${typed}”: ${match[1]}` : match[1];
  if (target.id === "memory") text = text.replace(/\b\d{7,}\b/g, (n) => sized(Number(n)));
  if (target.id === "utilization") text = text.replace("must be in (0, 1]", "must be above 0% and at most 100%");
  return text;
}

function markInvalid(target) {
  const controls = target.matches("input, select, textarea") ? [target] : [...target.querySelectorAll("input")];
  controls.forEach((el) => el.setAttribute("aria-invalid", "true"));
}

function showProblem(error, table, formErrorId) {
  const problem = error && error.problem ? error.problem : { title: "Something went wrong", detail: String(error.message || error) };
  let placed = 0;
  let first = null;
  for (const item of problem.errors || []) {
    let target = elementForField(item.field || "", table);
    if (target && target.closest("[hidden]")) target = null;
    if (!target) continue;
    const message = $(`err-${target.id}`);
    if (!message) continue;
    message.textContent = inUserTerms(item.message || "", target);
    markInvalid(target);
    first = first || target;
    placed += 1;
  }
  const title = problem.title || "Request failed";
  $(formErrorId).textContent = placed ? `${title}: see the highlighted field.`
    : `${title}${problem.status ? ` (${problem.status})` : ""}: ${problem.detail || ""}`;
  return first;
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

function wholeNumber(id, field, optional = false) {
  const text = $(id).value.trim();
  if (text === "" && optional) return null;
  const value = Number(text);
  if (text === "" || !Number.isInteger(value)) throw new FieldProblem(field, `“${text}” is not a whole number`);
  return value;
}

function planBody() {
  const body = {};
  typedAtSubmit = {};
  if (selected("model-source") === "preset") {
    body.model = { preset: $("model-preset").value };
  } else {
    let config;
    try { config = JSON.parse($("model-config").value); } catch (e) {
      throw new FieldProblem("model.hf_config", `not valid JSON: ${e.message}`);
    }
    body.model = { hf_config: config };
  }
  const count = wholeNumber("count", "hardware.count");
  if (selected("hardware-source") === "device") {
    body.hardware = { device: $("device").value, count };
  } else {
    const typed = $("memory").value.trim();
    const bytes = parseSize(typed);
    if (bytes === null) {
      throw new FieldProblem("hardware.memory_bytes", `“${typed}” is not a size (examples: 80GiB, 80GB, 24)`);
    }
    typedAtSubmit.memory = typed;
    body.hardware = { memory_bytes: bytes, count };
    const units = wholeNumber("compute-units", "hardware.compute_units", true);
    if (units !== null) body.hardware.compute_units = units;
  }
  const contextText = $("context").value.trim();
  const context = parseTokens(contextText);
  if (context === null) {
    throw new FieldProblem("workload.context_length", `“${contextText}” is not a token count (examples: 4096, 8k, 128K)`);
  }
  typedAtSubmit.context = contextText;
  body.workload = { context_length: context, concurrent_sequences: wholeNumber("sequences", "workload.concurrent_sequences") };
  // "auto" sends none: the API then takes vLLM's --kv-cache-dtype auto (a checkpoint's own fp8 cache, else 16-bit)
  if ($("kv-dtype").value) body.kv_cache = { dtype: $("kv-dtype").value };
  const weights = weightsBody();
  if (weights) body.weights = weights;
  if (checkpointHeaders) body.checkpoint = checkpointHeaders;  // sent as files: postPlan
  const tensor = wholeNumber("tensor", "parallel.tensor", true);
  const pipeline = wholeNumber("pipeline", "parallel.pipeline", true);
  if (tensor !== null || (pipeline !== null && pipeline !== 1)) {
    body.parallel = {};
    if (tensor !== null) body.parallel.tensor = tensor;
    if (pipeline !== null) body.parallel.pipeline = pipeline;
  }
  const utilizationText = $("utilization").value.trim();
  if (utilizationText !== "") {
    const percent = Number(utilizationText);
    if (!Number.isFinite(percent)) throw new FieldProblem("runtime.memory_utilization", `“${utilizationText}” is not a number`);
    typedAtSubmit.utilization = `${utilizationText}%`;
    body.runtime = { memory_utilization: percent / 100 };
  }
  // "default" sends none: the API's own default release applies
  if ($("engine-version").value) body.runtime = { ...body.runtime, engine_version: $("engine-version").value };
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
// The plan on screen: its answer, its sweeps once in, and the group size it was asked with.  A resized window
// or a unit switch redraws it from here; neither asks again.
let shown = null;
let deviceIds = [];

function clearPlan() {
  // A failed plan leaves no earlier answer on screen: it would read as the answer to the new question.
  shown = null;
  $("plan-result").hidden = true;
  ["verdict", "bars", "sweep", "devices-chart", "warnings"].forEach((id) => $(id).replaceChildren());
  for (const id of ["export-json", "export-csv"]) {
    const link = $(id);
    if (link.href && link.href.startsWith("blob:")) URL.revokeObjectURL(link.href);
    link.removeAttribute("href");
    link.hidden = true;
  }
  $("copy-link").disabled = true;
}

async function runPlan() {
  const form = $("plan-form");
  clearErrors(form, "plan-error");
  $("plan-status").textContent = "";
  const ticket = ++planSequence;
  await checkpointReading;
  await formatsCurrent();
  let body;
  try { body = planBody(); } catch (error) {
    clearPlan();
    const target = showProblem(error, PLAN_FIELDS, "plan-error");
    if (target) target.focus();
    return;
  }
  const group = $("group-size").value;
  $("plan-button").disabled = true;
  try {
    const answer = await postPlan("/v1/plan", body);
    if (ticket !== planSequence) return;  // a newer request is on its way
    const fit = await fetchFit(body, answer);  // before rendering, so the verdict is drawn once and whole
    if (ticket !== planSequence) return;
    shown = { answer, sweep: null, devices: null, group, body, fit };
    renderPlan(answer);
    writeState();
    setExports(answer);
    const formats = Object.keys(answer.comparison);
    const sweepBody = { ...body, sweep: { context_lengths: sweepContexts(body.workload.context_length, answer), formats } };
    const { parallel, ...withoutParallel } = body;
    const devicesBody = { ...withoutParallel, sweep: { devices: deviceIds } };
    // No context runs where the engine refuses every format: that chart is not asked for.  The devices side by side
    // still are: they say which device types run it.
    const runs = Object.values(answer.comparison).some((result) => !result.refusal);
    $("sweep-figure").hidden = !runs;
    const [sweep, devices] = await Promise.all([
      runs ? postPlan("/v1/plan/sweep", sweepBody) : Promise.resolve(null),
      deviceIds.length ? postPlan("/v1/plan/sweep", devicesBody).catch(() => null) : Promise.resolve(null),
    ]);
    if (ticket !== planSequence) return;
    shown.sweep = sweep;
    shown.devices = devices && devices.devices;
    if (sweep) renderSweep(sweep, answer);
    renderDevices(shown.devices, answer);
  } catch (error) {
    if (ticket === planSequence) {
      clearPlan();
      showProblem(error, PLAN_FIELDS, "plan-error");
    }
  } finally {
    if (ticket === planSequence) $("plan-button").disabled = false;
  }
}

// --- state in the URL, exports ------------------------------------------------------------------

function writeState() {
  const params = new URLSearchParams();
  const source = selected("model-source");
  if (source === "preset") params.set("model", $("model-preset").value);
  const hardware = selected("hardware-source");
  if (hardware === "device") params.set("device", $("device").value); else params.set("memory", $("memory").value.trim());
  for (const [key, id] of Object.entries(STATE_INPUTS)) {
    if (["model", "device", "memory"].includes(key) || (key === "sms" && hardware === "device")) continue;
    const value = $(id).value.trim();
    if (value !== "") params.set(key, value);
  }
  if ($("pad").checked) params.set("pad", "1");
  if (formatPickedByUser) params.set("format", formatPickedByUser);
  if (unit !== "GiB") params.set("unit", unit);
  let hash = "";
  if (source === "config") {
    const text = $("model-config").value;
    if (text.length <= MAX_CONFIG_IN_LINK) hash = `#config=${encodeURIComponent(text)}`;
    else $("plan-status").textContent = "The pasted config is too long for a link: the link holds every other input.";
  }
  history.replaceState(null, "", `${location.pathname}?${params.toString()}${hash}`);
  $("copy-link").disabled = false;
}

function readState() {
  // Fill the form from a plan link; true when it names a model (then the page plans it at once).
  const params = new URLSearchParams(location.search);
  const config = new URLSearchParams(location.hash.slice(1)).get("config");
  for (const [key, id] of Object.entries(STATE_INPUTS)) {
    if (params.has(key)) $(id).value = params.get(key);
  }
  if (params.has("memory")) document.querySelector('input[name="hardware-source"][value="memory"]').checked = true;
  if (params.get("pad") === "1") $("pad").checked = true;
  if (params.has("format")) formatPickedByUser = params.get("format");
  if (params.has("kv")) kvPickedByUser = params.get("kv");  // its menu is filled later, for the model (fillKvDtypes)
  if (params.get("unit") in UNITS) { unit = params.get("unit"); $("unit").value = unit; }
  if (config !== null) {
    document.querySelector('input[name="model-source"][value="config"]').checked = true;
    $("model-config").value = config;
  }
  syncSources();
  return params.has("model") || config !== null;
}

function csvCell(value) {
  const text = String(value);
  return /[",\n]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
}

function planCsv(answer) {
  // One row per format and device, in bytes, as the API answers them; a device's fits is its memory only, so the
  // engine's refusal of the format (empty when none) goes beside it: a refused format does not run whatever fits says.
  const header = ["model", "format", "device", "pipeline_stage", "tensor_rank", "weights_bytes", "kv_cache_bytes",
    "activation_bytes", "overhead_bytes", "used_bytes", "usable_bytes", "capacity_bytes", "headroom_bytes", "fits",
    "refusal"];
  const rows = [header];
  for (const [name, result] of Object.entries(answer.comparison)) {
    for (const d of result.devices) {
      rows.push([answer.model, name, d.index, d.pipeline_stage, d.tensor_rank, d.weights_bytes, d.kv_cache_bytes,
        d.activation_bytes, d.overhead_bytes, d.used_bytes, d.usable_bytes, d.capacity_bytes, d.headroom_bytes, d.fits,
        result.refusal || ""]);
    }
  }
  return rows.map((row) => row.map(csvCell).join(",")).join("\r\n") + "\r\n";
}

function setExports(answer) {
  const files = [["export-json", JSON.stringify(answer, null, 2), "application/json"],
    ["export-csv", planCsv(answer), "text/csv"]];
  const stem = `nibble-plan-${answer.model.replace(/[^\w.-]+/g, "_")}`;
  for (const [id, text, type] of files) {
    const link = $(id);
    if (link.href && link.href.startsWith("blob:")) URL.revokeObjectURL(link.href);
    link.href = URL.createObjectURL(new Blob([text], { type }));
    link.download = `${stem}.${id === "export-json" ? "json" : "csv"}`;
    link.hidden = false;
  }
}

async function copyLink() {
  try {
    await navigator.clipboard.writeText(location.href);
    $("plan-status").textContent = "Link copied: opening it plans the same again.";
  } catch (_) {
    $("plan-status").textContent = `Copy this link: ${location.href}`;
  }
}

// --- rendering the plan -------------------------------------------------------------------------

function redrawShown() {
  if (!shown) return;
  renderPlan(shown.answer);
  if (shown.sweep) renderSweep(shown.sweep, shown.answer);
  renderDevices(shown.devices, shown.answer);
}

function formatTitle(name) {
  const planned = plannedFormatTitle(name);
  if (planned) return planned;
  if (name === "int4") {
    const group = shown ? shown.group : "128";
    return `INT4 (group ${group === "row" ? "whole row" : group})`;
  }
  if (["bf16", "fp16", "fp32"].includes(name)) return `16-bit (${name})`;
  return name;
}

function verdictSentence(name, result, shared) {
  const title = formatTitle(name);
  if (result.fits) {
    const headroom = Math.min(...result.devices.map((d) => d.headroom_bytes));
    return `${title}: fits, with ${sized(headroom)} to spare on the fullest device.`;
  }
  const worst = result.devices.reduce((a, b) => (b.headroom_bytes < a.headroom_bytes ? b : a));
  if (result.refusal && result.refusal === shared) {
    // the reason is said once above the formats; each says what its memory alone would do, as the CLI does
    const memory = result.devices.every((d) => d.fits) ? "its memory alone would fit"
      : `nor would its memory fit: device ${worst.index} needs ${sized(worst.used_bytes)} of ${sized(worst.usable_bytes)} usable`;
    return `${title}: refused by the engine (the reason above); ${memory}.`;
  }
  if (result.refusal) return `${title}: refused by the engine: ${result.refusal}.`;
  const more = result.min_devices ? ` It would fit on ${result.min_devices} devices.` : " It does not fit on any number of these devices.";
  return `${title}: does not fit; device ${worst.index} needs ${sized(worst.used_bytes)} but only ` +
    `${sized(worst.usable_bytes)} is usable.${more}`;
}

function longestContext(result) {
  if (!result.max_context_length) return "none";
  const reason = result.context_limited_by === "model" ? " (the model's trained context)"
    : result.context_limited_by === "search_limit" ? " (the search limit)" : "";
  return `${thousands(result.max_context_length)}${reason}`;
}

function fillTable(id, rows) {
  const table = $(id);
  const labels = [...table.querySelectorAll("thead th")].map((th) => th.textContent.trim());
  const tbody = table.querySelector("tbody");
  tbody.replaceChildren();
  for (const { cells, className } of rows) {
    const row = tbody.insertRow();
    if (className) row.className = className;
    cells.forEach((text, i) => {
      let cell;
      if (i === 0) { cell = document.createElement("th"); cell.scope = "row"; row.append(cell); } else cell = row.insertCell();
      cell.textContent = text;
      cell.dataset.label = labels[i] || "";
    });
  }
}

// When 16-bit does not fit in memory: the planner's largest per-tensor mix that fits (weights.format "fit") and the
// recipe POST /v1/quantize takes for it, or why none fits.  Not asked when the engine refuses 16-bit: a mix keeps
// 16-bit tensors, so its answer would be the same refusal again.
async function fetchFit(body, answer) {
  const sixteen = answer.comparison.bf16 || answer.comparison.fp16 || answer.comparison.fp32;
  if (!sixteen || sixteen.fits || sixteen.refusal || body.checkpoint) return null;
  const { weights, ...rest } = body;
  try {
    const fitAnswer = await postJson("/v1/plan", { ...rest, weights: { format: "fit" } });
    return fitAnswer.fit ? fitAnswer : null;
  } catch {
    return null;  // the plan stands without the offer
  }
}

function fitLine(fitAnswer) {
  const fit = fitAnswer.fit;
  const line = document.createElement("p");
  line.className = fit.fits ? "fits" : "no-fit";
  line.dataset.format = "fit";
  if (!fit.fits) {
    // its byte counts (quant_core/fit.py: "needs N bytes more (U used of A usable)") in the unit the page shows
    const reason = fit.reason.replace(/\b(\d{7,})( bytes)?/g, (_, bytes) => sized(Number(bytes)));
    line.textContent = `No mix of int4, int8 and 16-bit fits: ${reason}.`;
    return line;
  }
  const mix = Object.entries(fit.formats).map(([name, count]) => `${count} × ${name}`).join(", ");
  const recipe = fit.recipe;
  line.textContent = `Best mix that fits: ${fit.bits_per_weight.toFixed(2)} bits per weight on the quantized layers ` +
    `(${mix}), ${sized(fitAnswer.weights.bytes)} of weights. Quantize it with POST /v1/quantize: method=${recipe.method} ` +
    `budget_bytes=${recipe.budget_bytes}${recipe.include ? ` include=${recipe.include}` : ""} output=${recipe.output}.`;
  return line;
}

// A refusal every format shares is not the weights': the input it is about, named and marked.  The planner's
// warning for a refused KV cache or a device that runs no INT4 (quant_core/planner.py _warnings) says which, else
// vLLM's own words for a parallel layout (VllmProfile.refusal); none is named when neither says.
const REFUSED_FIELD_LABELS = { "kv-dtype": "KV cache dtype", device: "Device", tensor: "Tensor parallel",
  count: "Devices", pipeline: "Pipeline stages" };

function sharedRefusal(answer) {
  const results = Object.values(answer.comparison);
  const first = results.length ? results[0].refusal : null;
  return first && results.every((result) => result.refusal === first) ? first : null;
}

function refusedField(answer, refusal) {
  const warned = (start) => answer.warnings.some((text) => text.startsWith(start) && text.includes(refusal));
  if (warned(`The model cannot run with its ${answer.kv_cache.dtype} KV cache`)) return ["kv-dtype", answer.kv_cache.dtype];
  if (warned("The model cannot run at INT4 on this device") && answer.hardware.device) return ["device", answer.hardware.name];
  if (/^vLLM refuses tensor parallel size/.test(refusal)) {
    const asked = shown && shown.body.parallel && shown.body.parallel.tensor !== undefined;
    return asked ? ["tensor", answer.parallel.tensor] : ["count", answer.hardware.count];
  }
  if (/^vLLM refuses \d+ pipeline stages/.test(refusal)) return ["pipeline", answer.parallel.pipeline];
  return [null, null];
}

function refusalLine(answer, refusal) {
  const [field, value] = refusedField(answer, refusal);
  const line = document.createElement("p");
  line.className = "no-fit refusal";
  line.textContent = field ? `${REFUSED_FIELD_LABELS[field]} (${value}) is refused: ${refusal}.` : `The engine's reason: ${refusal}.`;
  if (field) {
    line.dataset.field = field;
    const engine = answer.engine.name === "vllm" ? `vLLM ${answer.engine.version}` : `the ${answer.engine.name} engine`;
    $(`err-${field}`).textContent = `refused by ${engine}: the verdict says why`;
    markInvalid($(field));
  }
  return line;
}

function renderPlan(answer) {
  $("plan-result").hidden = false;
  const verdict = $("verdict");
  verdict.replaceChildren();
  const entries = Object.entries(answer.comparison);
  const head = document.createElement("p");
  head.className = "verdict-head";
  const fitting = entries.filter(([, r]) => r.fits).map(([n]) => formatTitle(n));
  head.textContent = verdictHeadText(answer, entries, fitting);
  verdict.append(head);
  const shared = sharedRefusal(answer);
  if (shared) verdict.append(refusalLine(answer, shared));
  for (const [name, result] of entries) {
    const line = document.createElement("p");
    line.className = result.fits ? "fits" : "no-fit";
    line.dataset.format = name;
    line.dataset.fits = String(result.fits);
    line.textContent = verdictSentence(name, result, shared);
    verdict.append(line);
  }
  const context = document.createElement("p");
  context.className = "note";
  context.textContent = `${thousands(answer.workload.context_length)} tokens × ${answer.workload.concurrent_sequences} ` +
    `sequence(s) on ${answer.hardware.count} × ${answer.hardware.name} (${sized(answer.hardware.capacity_bytes)} each, ` +
    `${Math.round(answer.memory_utilization * 1000) / 10}% usable); tensor × pipeline = ${answer.parallel.tensor} × ` +
    `${answer.parallel.pipeline}; KV cache ${answer.kv_cache.dtype}, ${thousands(answer.kv_cache.bytes_per_token)} bytes per token; ` +
    `${engineRules(answer.engine)}.`;
  verdict.append(context);
  if (shown && shown.answer === answer && shown.fit) verdict.append(fitLine(shown.fit));
  renderCheckpoint(answer);

  renderBars(answer);
  const deviceRows = [];
  for (const [name, result] of entries) {
    for (const group of deviceGroups(result.devices)) {
      const d = group.device;
      // a device's fits is its memory only: a format the engine refuses does not run whatever its memory says
      deviceRows.push({ className: d.fits && !result.refusal ? "" : "over", cells: [formatTitle(name),
        deviceRange(group), size(d.weights_bytes), size(d.kv_cache_bytes), size(d.activation_bytes),
        size(d.overhead_bytes), size(d.used_bytes), size(d.usable_bytes), size(d.headroom_bytes),
        result.refusal ? "refused" : d.fits ? "yes" : "no"] });
    }
  }
  fillTable("per-device", deviceRows);
  fillTable("limits", entries.map(([name, result]) => ({ cells: [formatTitle(name), size(result.weights_bytes),
    result.bits_per_weight.toFixed(3), longestContext(result), thousands(result.max_concurrent_sequences),
    result.min_devices ?? "none"] })));
  renderSpeed(answer);
  const warnings = $("warnings");
  // a warning that repeats a refusal the verdict gives is left out: the reason is said once
  const refusals = entries.map(([, result]) => result.refusal).filter(Boolean);
  warnings.replaceChildren(...answer.warnings.filter((text) => !refusals.some((refusal) => text.includes(refusal))).map((text) => {
    const item = document.createElement("li");
    item.textContent = text;
    return item;
  }));
  document.querySelectorAll(".unit-name").forEach((el) => { el.textContent = unit; });
}

function seconds(value) {
  if (value === null || value === undefined) return "n/a";
  return value >= 1 ? `${value.toFixed(2)} s` : `${(value * 1000).toFixed(1)} ms`;
}

function renderSpeed(answer) {
  const speed = answer.speed;
  $("speed").hidden = !speed;
  if (!speed) return;
  // A bound for a format that does not fit would answer a question nobody can deploy: say so instead.
  const rows = Object.entries(speed.formats).map(([name, bound]) => {
    const result = answer.comparison[name] || answer;
    const no = result.refusal ? "refused" : "does not fit";  // as the per-device table says it
    const rate = (value) => (!result.fits ? no : value === null ? "n/a" : value.toFixed(1));
    return { cells: [formatTitle(name), rate(bound.decode_tokens_per_second_per_sequence),
      rate(bound.decode_tokens_per_second_aggregate), size(bound.bytes_read_per_step),
      result.fits ? seconds(bound.prefill_seconds) : no] };
  });
  fillTable("speed-table", rows);
  $("speed-basis").textContent = `${speed.basis} Prefill is for one prompt of ${thousands(answer.workload.context_length)} tokens.`;
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

function deviceRange(group) {
  return group.first === group.last ? `device ${group.first}` : `devices ${group.first}–${group.last}`;
}

function chartWidth(container) {
  return Math.max(300, Math.min(1100, container.clientWidth || 600));
}

function legendItems(list, items) {
  list.replaceChildren(...items.map(([label, cls, data]) => {
    const item = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = `swatch ${cls}`;
    swatch.setAttribute("aria-hidden", "true");
    item.append(swatch, document.createTextNode(label));
    if (data) Object.assign(item.dataset, data);
    return item;
  }));
}

function yAxis(svg, top, y, left, right) {
  const scale = UNITS[unit].bytes;
  const step = niceStep(top / scale, 5);
  for (let v = 0; v * scale <= top; v += step) {
    svg.append(svgElement("line", { x1: left, x2: right, y1: y(v * scale), y2: y(v * scale), class: "grid" }));
    svg.append(svgElement("text", { x: left - 6, y: y(v * scale) + 4, class: "tick", "text-anchor": "end" }, `${+v.toFixed(2)}`));
  }
}

function renderBars(answer) {
  const container = $("bars");
  const width = chartWidth(container);
  const height = 300;
  const margin = { top: 20, right: 12, bottom: 58, left: 52 };
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
    "aria-label": `Stacked bars of memory per device for each format, in ${unit}; the table below lists the same figures` });
  yAxis(svg, top, y, margin.left, width - margin.right);
  svg.append(svgElement("text", { x: 12, y: margin.top + plotHeight / 2, class: "axis-label",
    transform: `rotate(-90 12 ${margin.top + plotHeight / 2})`, "text-anchor": "middle" }, `${unit} per device`));
  const gap = 18;
  const slot = (width - margin.left - margin.right - gap * (columns.length - 1)) / Math.max(bars, 1);
  const barWidth = Math.min(90, slot * 0.7);
  let x = margin.left;
  for (const column of columns) {
    const start = x;
    for (const group of column.groups) {
      const d = group.device;
      const left = x + (slot - barWidth) / 2;
      const runs = d.fits && !column.result.refusal;
      const barGroup = svgElement("g", { class: "bar", "data-format": column.name, "data-fits": String(runs) });
      let base = 0;
      for (const [key, label, cls] of TERMS) {
        const value = d[key];
        if (value <= 0) continue;
        const rect = svgElement("rect", { x: left, width: barWidth, y: y(base + value), height: Math.max(0.5, y(base) - y(base + value)),
          class: `segment ${cls}`, "data-term": key });
        rect.append(svgElement("title", {}, `${label}: ${sized(value)}`));
        barGroup.append(rect);
        base += value;
      }
      if (d.headroom_bytes > 0) {
        const rect = svgElement("rect", { x: left, width: barWidth, y: y(d.usable_bytes), height: y(base) - y(d.usable_bytes),
          class: "segment seg-headroom", "data-term": "headroom_bytes" });
        rect.append(svgElement("title", {}, `Headroom: ${sized(d.headroom_bytes)}`));
        barGroup.append(rect);
      }
      barGroup.append(svgElement("line", { x1: left - 6, x2: left + barWidth + 6, y1: y(d.capacity_bytes), y2: y(d.capacity_bytes), class: "capacity" }));
      barGroup.append(svgElement("line", { x1: left - 6, x2: left + barWidth + 6, y1: y(d.usable_bytes), y2: y(d.usable_bytes), class: "usable" }));
      barGroup.append(svgElement("text", { x: left + barWidth / 2, y: Math.max(12, y(Math.max(d.used_bytes, d.capacity_bytes)) - 6), class: "value", "text-anchor": "middle" },
        `${size(d.used_bytes)}`));
      barGroup.append(svgElement("text", { x: left + barWidth / 2, y: height - margin.bottom + 14, class: "tick", "text-anchor": "middle" }, deviceRange(group)));
      barGroup.append(svgElement("text", { x: left + barWidth / 2, y: height - margin.bottom + 28, class: runs ? "tick ok" : "tick bad", "text-anchor": "middle" },
        column.result.refusal ? "refused" : d.fits ? "fits" : "over"));
      svg.append(barGroup);
      x += slot;
    }
    svg.append(svgElement("text", { x: (start + x) / 2, y: height - 8, class: "column-label", "text-anchor": "middle" },
      formatTitle(column.name)));
    x += gap;
  }
  container.replaceChildren(svg);
  legendItems($("bars-legend"), [...TERMS.map(([, label, cls]) => [label, cls]), ["Headroom (usable − used)", "seg-headroom"],
    ["Capacity", "key-capacity"], ["Usable (capacity × utilization)", "key-usable"]]);
}

function pointState(row) {
  // A point fits only within memory AND within the model's trained context (the row's longest context is capped by it).
  if (!row.fits) return "over";
  if (row.max_context_length !== null && row.context_length > row.max_context_length) return "beyond";
  return "fits";
}

function renderSweep(sweep, answer) {
  const container = $("sweep");
  const width = chartWidth(container);
  const height = 280;
  // Every label sits outside the plot area (ticks in the margins, the legend below the chart as HTML), so no
  // text is drawn over a line.
  const margin = { top: 12, right: 16, bottom: 44, left: 52 };
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
  const y = (bytes) => margin.top + plotHeight * (1 - Math.min(bytes, top) / top);
  const svg = svgElement("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", class: "sweep",
    "aria-label": `Memory on the fullest device, in ${unit}, against context length; the legend below names each line` });
  svg.append(svgElement("rect", { x: margin.left, y: margin.top, width: plotWidth, height: plotHeight, class: "plot-area" }));
  yAxis(svg, top, y, margin.left, width - margin.right);
  for (let e = Math.ceil(minX); e <= maxX; e += (maxX - minX > 8 ? 2 : 1)) {
    const c = 2 ** e;
    svg.append(svgElement("text", { x: x(c), y: height - margin.bottom + 16, class: "tick", "text-anchor": "middle" },
      c >= 1024 ? `${c / 1024}K` : `${c}`));
  }
  svg.append(svgElement("text", { x: margin.left + plotWidth / 2, y: height - 6, class: "axis-label", "text-anchor": "middle" },
    "context length (tokens per sequence, log scale)"));
  svg.append(svgElement("text", { x: 12, y: margin.top + plotHeight / 2, class: "axis-label",
    transform: `rotate(-90 12 ${margin.top + plotHeight / 2})`, "text-anchor": "middle" }, unit));
  svg.append(svgElement("line", { x1: margin.left, x2: width - margin.right, y1: y(capacity), y2: y(capacity), class: "capacity" }));
  svg.append(svgElement("line", { x1: margin.left, x2: width - margin.right, y1: y(usable), y2: y(usable), class: "usable" }));
  const legend = [];
  let index = 0;
  let beyondSeen = false;
  for (const [format, rows] of series) {
    const name = names[index] || format;
    const cls = `series-${index}`;
    const result = answer.comparison[name];
    const refused = Boolean(result && result.refusal);  // no context runs it, whatever its memory says
    const points = rows.map((r) => `${x(r.context_length).toFixed(1)},${y(r.max_device_used_bytes).toFixed(1)}`).join(" ");
    svg.append(svgElement("polyline", { points, class: `line ${cls}`, "data-format": name }));
    for (const r of rows) {
      const state = pointState(r);
      beyondSeen = beyondSeen || state === "beyond";
      const dot = svgElement("circle", { cx: x(r.context_length), cy: y(r.max_device_used_bytes), r: 3.5,
        class: `dot ${cls} ${state === "fits" ? "" : state}`, "data-state": state, "data-context": r.context_length, "data-format": name });
      const words = refused ? "refused by the engine" : state === "fits" ? "fits"
        : state === "beyond" ? "past the model's trained context" : "does not fit";
      dot.append(svgElement("title", {}, `${formatTitle(name)}, ${thousands(r.context_length)} tokens: ${sized(r.max_device_used_bytes)} (${words})`));
      svg.append(dot);
    }
    const longest = result && result.max_context_length;
    let label = `${formatTitle(name)}`;
    if (longest) {
      const why = result.context_limited_by === "model" ? "limit set by the model's trained context, not memory"
        : result.context_limited_by === "search_limit" ? "the search limit" : "memory";
      label += `: fits up to ${thousands(longest)} tokens (${why})`;
      if (Math.log2(longest) >= minX && Math.log2(longest) <= maxX) {
        svg.append(svgElement("line", { x1: x(longest), x2: x(longest), y1: margin.top, y2: height - margin.bottom,
          class: `marker ${cls}`, "data-format": name, "data-limited-by": result.context_limited_by }));
      }
    } else {
      label += refused ? ": refused by the engine (the verdict says why)" : ": no context fits";
    }
    legend.push([label, `key-line ${cls}`, { format: name, limitedBy: result ? result.context_limited_by : "" }]);
    index += 1;
  }
  const current = Number(answer.workload.context_length);
  svg.append(svgElement("line", { x1: x(current), x2: x(current), y1: margin.top, y2: height - margin.bottom, class: "current" }));
  container.replaceChildren(svg);
  legend.push([`Capacity ${sized(capacity)}`, "key-capacity"], [`Usable ${sized(usable)}`, "key-usable"],
    [`Requested context ${thousands(current)} tokens`, "key-current"]);
  if (beyondSeen) legend.push(["Past the model's trained context (not a fit)", "key-beyond"]);
  legendItems($("sweep-legend"), legend);
  const words = { fits: "yes", over: "no", beyond: "no: past the model's trained context" };
  const rows = [];
  [...series.values()].forEach((seriesRows, i) => {
    const result = answer.comparison[names[i]];
    for (const r of seriesRows) {
      rows.push({ cells: [thousands(r.context_length), formatTitle(names[i] || r.format), size(r.max_device_used_bytes),
        result && result.refusal ? "no: refused by the engine" : words[pointState(r)]] });
    }
  });
  fillTable("sweep-table", rows);
}

function renderDevices(devices, answer) {
  const figure = $("devices-figure");
  figure.hidden = !devices || !devices.length;
  if (figure.hidden) return;
  const container = $("devices-chart");
  const width = chartWidth(container);
  const names = Object.keys(devices[0].formats);
  const rowHeight = 15;
  const groupGap = 10;
  const narrow = width < 520;
  const margin = { top: 8, right: narrow ? 12 : 210, bottom: 30, left: narrow ? 104 : 170 };
  const height = margin.top + margin.bottom + devices.length * (names.length * rowHeight + groupGap);
  const counts = devices.flatMap((d) => Object.values(d.formats).map((f) => f.min_devices || 0));
  const most = Math.max(1, ...counts);
  const plotWidth = width - margin.left - margin.right;
  // Device counts on a log2 axis: 1, 2, 4, ... so 1 and 64 are both readable.
  const topExponent = Math.max(1, Math.ceil(Math.log2(most)));
  const x = (count) => margin.left + plotWidth * (Math.log2(count) + 1) / (topExponent + 1);
  const svg = svgElement("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", class: "devices",
    "aria-label": "Fewest devices of each type that fit, per format; the text beside each bar gives the count and headroom" });
  for (let e = 0; e <= topExponent; e += 1) {
    svg.append(svgElement("line", { x1: x(2 ** e), x2: x(2 ** e), y1: margin.top, y2: height - margin.bottom, class: "grid" }));
    svg.append(svgElement("text", { x: x(2 ** e), y: height - margin.bottom + 14, class: "tick", "text-anchor": "middle" }, `${2 ** e}`));
  }
  svg.append(svgElement("text", { x: margin.left + plotWidth / 2, y: height - 4, class: "axis-label", "text-anchor": "middle" },
    "fewest devices that fit (log scale)"));
  if (!narrow) {
    svg.append(svgElement("text", { x: width - 4, y: height - 4, class: "axis-label", "text-anchor": "end" },
      "count · free · decode bound"));
  }
  let top = margin.top;
  for (const device of devices) {
    const current = answer.hardware.device === device.device;
    svg.append(svgElement("text", { x: margin.left - 8, y: top + (names.length * rowHeight) / 2 + 4,
      class: current ? "device-name current-device" : "device-name", "text-anchor": "end" },
      `${narrow ? device.device : device.name.replace(/^(NVIDIA|AMD) (GeForce |Instinct )?/, "")}${current ? " ◂" : ""}`));
    names.forEach((name, i) => {
      const fit = device.formats[name];
      const barTop = top + i * rowHeight + 2;
      const group = svgElement("g", { class: "device-bar", "data-device": device.device, "data-format": name,
        "data-min-devices": fit.min_devices ?? "" });
      if (fit.min_devices) {
        group.append(svgElement("rect", { x: margin.left, y: barTop, width: Math.max(2, x(fit.min_devices) - margin.left),
          height: rowHeight - 4, class: `device-rect series-${i}` }));
      }
      const speed = fit.decode_tokens_per_second_per_sequence;
      const text = fit.min_devices
        ? `${fit.min_devices} × · ${sized(fit.min_headroom_bytes)} free${speed ? ` · ≤ ${speed.toFixed(0)} tok/s` : ""}`
        : "no count fits";
      if (!narrow) {
        group.append(svgElement("text", { x: width - margin.right + 10, y: barTop + rowHeight - 5, class: "tick bar-label" }, text));
      }
      group.append(svgElement("title", {}, `${device.name}, ${formatTitle(name)}: ${text}`));
      svg.append(group);
    });
    top += names.length * rowHeight + groupGap;
  }
  container.replaceChildren(svg);
  legendItems($("devices-legend"), names.map((name, i) => [formatTitle(name), `key-bar series-${i}`]));
  // The figures in words for narrow screens and screen readers: one line per device type.
  const list = document.createElement("ul");
  list.className = "device-list";
  for (const device of devices) {
    const item = document.createElement("li");
    item.textContent = `${device.name}: ` + names.map((name) => {
      const fit = device.formats[name];
      return fit.min_devices ? `${formatTitle(name)} on ${fit.min_devices} (${sized(fit.min_headroom_bytes)} free)`
        : `${formatTitle(name)} on none`;
    }).join("; ");
    list.append(item);
  }
  const details = document.createElement("details");
  const summary = document.createElement("summary");
  summary.textContent = "Every device type in words";
  details.append(summary, list);
  container.append(details);
}

// --- quantize panel -----------------------------------------------------------------------------

function chosenMethods() {
  return [...document.querySelectorAll('#q-methods input[name="method"]:checked')].map((el) => el.value);
}

function uploadForm(extra, scheme = {}) {
  const file = $("q-file").files[0];
  if (!file) throw new FieldProblem("file", "choose a .npy or .safetensors file");
  const data = new FormData();
  data.append("file", file, file.name);
  const calibration = $("q-calibration").files[0];
  if (calibration) data.append("calibration", calibration, calibration.name);
  const importance = $("q-importance").files[0];
  if (importance) data.append("importance", importance, importance.name);
  const bits = $("q-bits").value.trim();
  if (bits) {
    if (!/^\d+(\.\d+)?$/.test(bits)) throw new FieldProblem("bits_per_weight", `“${bits}”: must be a number of bits per weight, e.g. 4.5`);
    data.append("bits_per_weight", bits);
  }
  if (!bits) data.append("group_size", scheme.group_size ?? $("q-group-size").value);  // a budget chooses it
  data.append("symmetric", (scheme.symmetric ?? $("q-symmetric").checked) ? "true" : "false");
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
    const target = showProblem(error, UPLOAD_FIELDS, "quant-error");
    if (target && error instanceof FieldProblem) (target.matches("input") ? target : target.querySelector("input")).focus();
  } finally {
    button.disabled = false;
    button.textContent = "Compare methods";
  }
}

function figure(value, digits, missing) {
  // JSON has no infinity: an exact result's SQNR comes as null, and so does an undefined relative error
  return value === null || value === undefined ? missing : value.toFixed(digits);
}

function weightedError(quality) {
  // the importance-weighted relative error next to the plain one; "minimised" when the method used the statistics
  if (quality.weighted_relative_error === null || quality.weighted_relative_error === undefined) return "—";
  return quality.weighted_relative_error.toFixed(5) + (quality.importance_used ? " (minimised)" : "");
}

function renderCompare(report) {
  $("compare-result").hidden = false;
  const budgeted = report.tensors.some((tensor) => new Set(tensor.results.map((result) => result.format)).size > 1)
    || Boolean($("q-bits").value.trim());
  const rows = [];
  for (const tensor of report.tensors) {
    tensor.results.forEach((result, i) => {
      rows.push({ className: result.method === tensor.best_method ? "best" : "", cells: [
        i === 0 ? `${tensor.name} [${tensor.shape.join(" × ")}]` : "",
        result.method + (result.method === tensor.best_method ? " (best)" : "") + (budgeted ? ` · ${result.format}` : ""),
        thousands(result.bytes.output), result.bits_per_weight.toFixed(3), figure(result.quality.relative_error, 5, "—"),
        figure(result.quality.sqnr_db, 2, "∞"), weightedError(result.quality), result.quality.max_abs_error.toPrecision(4)] });
    });
  }
  fillTable("compare-table", rows);
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

// GGUF Q4_0 is blocks of 32 weights with one fp16 scale each and no zero point (ggml's block_q4_0).
const GGUF_SCHEME = { group_size: "32", symmetric: true };

function syncOutput() {
  const gguf = $("d-output").value === "gguf";
  if (gguf) {
    $("q-group-size").value = GGUF_SCHEME.group_size;
    $("q-symmetric").checked = true;
  }
  $("d-output-note").textContent = gguf
    ? "GGUF Q4_0 stores groups of 32 without zero points: the group size is set to 32 and Symmetric is ticked." : "";
}

function hideDownloadLink() {
  const link = $("download-link");
  if (link.href && link.href.startsWith("blob:")) URL.revokeObjectURL(link.href);
  link.removeAttribute("href");
  link.textContent = "";
  link.hidden = true;
}

async function runDownload() {
  const form = $("download-form");
  clearErrors(form, "download-error");
  hideDownloadLink();  // a link from an earlier download must not outlive a failure of this one
  const button = $("download-button");
  try {
    const output = $("d-output").value;
    const data = uploadForm({ method: $("d-method").value, output }, output === "gguf" ? GGUF_SCHEME : {});
    button.disabled = true;
    const response = await api("/v1/quantize", { method: "POST", body: data });
    const blob = await response.blob();
    const disposition = response.headers.get("Content-Disposition") || "";
    const match = /filename="([^"]+)"/.exec(disposition);
    const link = $("download-link");
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

// --- weight formats and checkpoint headers (issue 18) ---------------------------------------------
// The format selector lists /v1/models/inspect's formats for the chosen model with their bits per weight,
// the one its config.json ships first (and chosen unless the user picked another); the same answer's
// kv_bytes_per_token fills the KV cache dtype menu (fillKvDtypes).  A checkpoint's files are
// read here, header only, with File.slice: a .safetensors file's 8-byte length and JSON, a .gguf file's start
// up to its last tensor record.  The plan sends those bytes as files (postPlan); the weights never leave the
// browser.

const MAX_HEADER_BYTES = 16 * 1024 * 1024;  // the server's default max_header_bytes (app/settings.py)
const MAX_CHECKPOINT_FORM_BYTES = 64 * 1024 * 1024;  // its default max_checkpoint_form_bytes
let formatRows = [];            // /v1/models/inspect's weight_bytes for the model the selector lists
let formatPickedByUser = null;  // the user's own choice, kept across models where it is listed
let formatsSequence = 0;
let checkpointHeaders = null;   // { files: [{ file, bytes }], index: bytes or null } of the chosen files, or null
let checkpointReading = Promise.resolve();
let formatsLoading = Promise.resolve();  // a plan waits for the selector of the model it plans
let formatsFor = null;                   // the inspect body the selector was filled for
let kvPickedByUser = "";                 // the KV cache dtype chosen ("" = auto), kept across models
// nibble's int8/int4 KV layout (an fp16 scale and zero per token and head): vLLM runs no such cache, so a vLLM plan
// refuses it (kv_cache.dtype's description), and the page plans for vLLM
const NOT_VLLM_KV_DTYPES = new Set(["int8", "int4"]);
Object.assign(PLAN_FIELDS, { "weights.format": "weight-format", checkpoint: "checkpoint-files" });

const formatKey = (row) => (row.as_shipped ? "as_shipped" : row.format);
const isNibbleInt4 = (row) => Boolean(row && row.weights && row.weights.format === "int4" && !row.weights.layout);

function inspectBody() {
  if (selected("model-source") === "preset") return $("model-preset").value ? { preset: $("model-preset").value } : null;
  try { return { hf_config: JSON.parse($("model-config").value) }; } catch (_) { return null; }
}

function chosenFormatRow() {
  const index = Number($("weight-format").value);
  return $("weight-format").value === "" ? null : formatRows[index] || null;
}

function defaultFormatIndex(rows, wanted) {
  const usable = (i) => i >= 0 && rows[i].bytes !== null;
  const byKey = rows.findIndex((row) => formatKey(row) === wanted);
  if (wanted && usable(byKey)) return byKey;
  const shipped = rows.findIndex((row) => row.as_shipped);
  if (usable(shipped)) return shipped;
  // nibble's INT4 g128 asymmetric: what the page planned before it listed formats.
  const int4 = rows.findIndex((row) => isNibbleInt4(row) && row.weights.group_size === 128 && !row.weights.symmetric
    && row.weights.zero === "int4");
  return usable(int4) ? int4 : rows.findIndex((row) => row.bytes !== null);
}

function loadFormats() {
  formatsLoading = refillFormats();
  return formatsLoading;
}

async function formatsCurrent() {
  // The selector lists the model about to be planned (a pasted config fires "change" only on leaving the box).
  await formatsLoading;
  if (JSON.stringify(inspectBody()) !== formatsFor) await loadFormats();
}

async function refillFormats() {
  // Refill the selector for the model now chosen; an unreadable model leaves it empty (the plan says why).
  const ticket = ++formatsSequence;
  const body = inspectBody();
  formatsFor = JSON.stringify(body);
  let inspected = null;
  if (body) {
    try { inspected = await postJson("/v1/models/inspect", body); } catch (_) { inspected = null; }
  }
  if (ticket !== formatsSequence) return;
  const rows = inspected ? inspected.weight_bytes : [];
  formatRows = rows;
  fillKvDtypes(inspected && Object.keys(inspected.kv_bytes_per_token));
  const select = $("weight-format");
  select.dataset.model = body ? body.preset || "hf_config" : "";  // whose formats these are
  select.replaceChildren(...rows.map((row, i) => {
    const option = document.createElement("option");
    option.value = String(i);
    option.dataset.format = formatKey(row);
    const bits = row.bits_per_weight === null ? "cannot store this model" : `${row.bits_per_weight.toFixed(2)} bits per weight`;
    option.textContent = row.as_shipped ? `As shipped: ${row.format} (${bits})` : `${row.format} (${bits})`;
    option.disabled = row.bytes === null;
    return option;
  }));
  const index = defaultFormatIndex(rows, formatPickedByUser);
  if (index >= 0) select.value = String(index);
  syncFormat();
}

function fillKvDtypes(dtypes) {
  // After "auto": each KV cache the model's attention has (inspect's kv_bytes_per_token: MLA models have no
  // *_per_token_head), but nibble's own int8/int4, which no vLLM release runs.  The user's pick stays chosen where
  // the model has no such cache (or the model is unreadable): the plan asks for it and the API says why it refuses.
  const select = $("kv-dtype");
  const listed = (dtypes || []).filter((dtype) => !NOT_VLLM_KV_DTYPES.has(dtype));
  const items = listed.map((dtype) => [dtype, dtype]);
  if (kvPickedByUser && !listed.includes(kvPickedByUser)) {
    items.push([kvPickedByUser, dtypes ? `${kvPickedByUser} (not a cache of this model)` : kvPickedByUser]);
  }
  select.replaceChildren(select.options[0], ...items.map(([value, label]) => {
    const option = document.createElement("option");
    option.value = value;
    option.textContent = label;
    return option;
  }));
  select.value = kvPickedByUser;
}

function syncFormat() {
  // Group size and padding are nibble INT4's: off for any other format and for a checkpoint.
  const row = chosenFormatRow();
  const int4 = !checkpointHeaders && (!row || isNibbleInt4(row));
  $("group-size").disabled = !int4;
  $("pad").disabled = !int4;
  $("weight-format").disabled = Boolean(checkpointHeaders) || !formatRows.length;
  let note = "";
  if (checkpointHeaders) note = "The checkpoint's own tensors are planned: its headers give the format.";
  else if (row && row.as_shipped) note = `The model's config.json ships it in ${row.format}: planned as shipped, beside 16-bit and INT4.`;
  else if (row && isNibbleInt4(row)) note = "nibble's INT4: the group size and padding above apply.";
  else if (row) note = `Planned in ${row.format}, beside 16-bit and INT4.`;
  $("weight-format-note").textContent = note;
}

function pickFormat() {
  const row = chosenFormatRow();
  formatPickedByUser = row ? formatKey(row) : null;
  if (isNibbleInt4(row)) $("group-size").value = row.weights.group_size === null ? "row" : String(row.weights.group_size);
  syncFormat();
}

function followGroupSize() {
  // A new INT4 group size picks the listed INT4 format of that group (same zero points), so the selector's
  // bits per weight stay those of what is planned.
  const row = chosenFormatRow();
  if (!isNibbleInt4(row)) return;
  const group = $("group-size").value === "row" ? null : Number($("group-size").value);
  const match = formatRows.findIndex((other) => isNibbleInt4(other) && other.weights.group_size === group
    && other.weights.symmetric === row.weights.symmetric && other.weights.zero === row.weights.zero);
  if (match >= 0) {
    $("weight-format").value = String(match);
    formatPickedByUser = formatKey(formatRows[match]);
  }
}

function weightsBody() {
  // The plan's `weights`: none for a checkpoint or the as-shipped format (the API plans those itself).
  if (checkpointHeaders) return null;
  const row = chosenFormatRow();
  if (row && row.as_shipped) return null;
  if (row && !isNibbleInt4(row)) return { ...row.weights };
  const group = $("group-size").value;
  const weights = { format: "int4", group_size: group === "row" ? null : Number(group) };
  if (row && row.weights.symmetric) weights.symmetric = true;
  if (row && row.weights.zero && row.weights.zero !== "int4") weights.zero = row.weights.zero;
  if ($("pad").checked) weights.pad = true;
  return weights;
}

function plannedFormatTitle(name) {
  // Titles of the comparison's keys beyond 16-bit and nibble's INT4, from the answer on screen.
  const result = shown && shown.answer.comparison[name];
  if (name === "as_shipped") return `As shipped (${result ? result.format : "config.json"})`;
  if (name === "checkpoint") return `Checkpoint (${result ? result.format.replace(/^checkpoint-/, "") : "headers"})`;
  if (name.startsWith("gguf-")) return `GGUF ${name.slice(5).toUpperCase()}`;
  if (["int4", "bf16", "fp16", "fp32"].includes(name)) return null;
  return result ? result.format : name;
}

function engineRules(engine) {
  return engine.name === "vllm" ? `planned by vLLM ${engine.version}'s rules` : `planned by the ${engine.name} engine`;
}

function verdictHeadText(answer, entries, fitting) {
  if (!fitting.length && entries.every(([, r]) => r.refusal)) {
    // not a matter of memory: the engine runs none of them (a KV cache its release lacks, ...); each line says why
    return `${answer.model}: the engine refuses every format planned.`;
  }
  if (fitting.length === entries.length) {
    return entries.length === 2 ? `${answer.model} fits at 16-bit and at INT4.` : `${answer.model} fits in every format planned.`;
  }
  if (fitting.length) return `${answer.model} fits only at ${fitting.join(", ")}.`;
  return entries.length === 2 ? `${answer.model} does not fit, even at INT4.` : `${answer.model} does not fit in any format planned.`;
}

function renderCheckpoint(answer) {
  const summary = answer.checkpoint;
  if (!summary) return;
  const line = document.createElement("p");
  line.className = "note";
  line.id = "checkpoint-summary";
  const unknown = summary.unknown_tensors.length
    ? ` ${summary.unknown_tensors.length} tensor(s) of no module of the model, planned as other: ${summary.unknown_tensors.slice(0, 5).join(", ")}${summary.unknown_tensors.length > 5 ? ", …" : ""}.` : "";
  const mtp = summary.mtp_tensors ? ` ${thousands(summary.mtp_tensors)} multi-token-prediction tensor(s) (${sized(summary.mtp_bytes)}) are set apart: engines skip them.` : "";
  line.textContent = `From the checkpoint's headers: ${thousands(summary.tensors)} tensors, ${thousands(summary.bytes)} bytes ` +
    `(${sized(summary.bytes)}) in ${summary.format}.${mtp}${unknown}`;
  $("verdict").append(line);
}

async function fileBytes(file, start, end) {
  return new Uint8Array(await file.slice(start, end).arrayBuffer());
}

async function safetensorsHeader(file) {
  // The 8-byte little-endian header length, then that many bytes of JSON: nothing past them is read.
  if (file.size < 8) throw new FieldProblem("checkpoint", `${file.name}: ${file.size} bytes is shorter than a safetensors header length`);
  const length = new DataView((await fileBytes(file, 0, 8)).buffer).getBigUint64(0, true);
  if (length > BigInt(MAX_HEADER_BYTES)) {
    throw new FieldProblem("checkpoint", `${file.name}: a header of ${thousands(length)} bytes is past the ${thousands(MAX_HEADER_BYTES)}-byte limit`);
  }
  if (8 + Number(length) > file.size) throw new FieldProblem("checkpoint", `${file.name}: its header runs past the end of the file`);
  return fileBytes(file, 0, 8 + Number(length));
}

const GGUF_SCALAR_BYTES = { 0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8 };  // gguf-py's GGUFValueType
const SHORT = Symbol("the window ends inside the header");

function ggufHeaderEnd(bytes) {
  // Where a GGUF (v2, v3) file's last tensor record ends, or null when `bytes` stops first.  Layout from
  // gguf-py: magic, version u32, tensor count u64, metadata count u64, metadata (key, type, value), then per
  // tensor: name, dimensions u32, each dimension u64, type u32, offset u64.
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let at = 0;
  const skip = (n) => { if (at + n > bytes.length) throw SHORT; at += n; };
  const u32 = () => { skip(4); return view.getUint32(at - 4, true); };
  const u64 = () => { skip(8); return Number(view.getBigUint64(at - 8, true)); };
  const skipValue = (type) => {
    if (type === 8) { skip(u64()); return; }
    if (type === 9) {
      const inner = u32();
      const count = u64();
      if (inner in GGUF_SCALAR_BYTES) skip(GGUF_SCALAR_BYTES[inner] * count);
      else for (let i = 0; i < count; i += 1) skipValue(inner);
      return;
    }
    if (!(type in GGUF_SCALAR_BYTES)) throw new Error(`unknown GGUF value type ${type}`);
    skip(GGUF_SCALAR_BYTES[type]);
  };
  try {
    skip(4);
    const version = u32();
    if (version < 2) throw new Error(`GGUF version ${version} is not read (2 and 3 are)`);
    const tensors = u64();
    const entries = u64();
    for (let i = 0; i < entries; i += 1) { skip(u64()); skipValue(u32()); }
    for (let i = 0; i < tensors; i += 1) { skip(u64()); skip(8 * u32()); skip(4 + 8); }
    return at;
  } catch (error) {
    if (error === SHORT) return null;
    throw error;
  }
}

async function ggufHeader(file) {
  // A growing window from the start (1 MiB, then 4x) until the last tensor record is inside it.
  let size = Math.min(file.size, 2 ** 20);
  for (;;) {
    const bytes = await fileBytes(file, 0, size);
    let end;
    try { end = ggufHeaderEnd(bytes); } catch (error) { throw new FieldProblem("checkpoint", `${file.name}: ${error.message}`); }
    if (end !== null) return bytes.subarray(0, end);
    if (size >= file.size) throw new FieldProblem("checkpoint", `${file.name}: the file ends inside its GGUF header`);
    if (size >= MAX_HEADER_BYTES) {
      throw new FieldProblem("checkpoint", `${file.name}: its GGUF header is past the ${thousands(MAX_HEADER_BYTES)}-byte limit`);
    }
    size = Math.min(file.size, size * 4, MAX_HEADER_BYTES);
  }
}

async function checkpointFromFiles(files) {
  // The headers of the chosen files; with model.safetensors.index.json, every shard it names must be chosen.
  const index = files.find((file) => file.name.endsWith(".json"));
  let shards = files.filter((file) => !file.name.endsWith(".json"));
  let indexBytes = null;
  if (!shards.length) throw new FieldProblem("checkpoint", "choose the .safetensors shards (or a .gguf file), not only the index");
  if (index) {
    if (index.size > MAX_HEADER_BYTES) {
      throw new FieldProblem("checkpoint", `${index.name}: ${thousands(index.size)} bytes is past the ${thousands(MAX_HEADER_BYTES)}-byte limit`);
    }
    indexBytes = await fileBytes(index, 0, index.size);
    let map;
    try { map = JSON.parse(new TextDecoder().decode(indexBytes)).weight_map; } catch (error) {
      throw new FieldProblem("checkpoint", `${index.name}: not valid JSON (${error.message})`);
    }
    if (!map || typeof map !== "object") throw new FieldProblem("checkpoint", `${index.name}: no weight_map object`);
    const named = [...new Set(Object.values(map).map(String))];
    const chosen = new Set(shards.map((file) => file.name));
    const missing = named.filter((name) => !chosen.has(name));
    if (missing.length) {
      throw new FieldProblem("checkpoint", `${index.name} names ${named.length} shards; ${missing.length} not chosen: ` +
        `${missing.slice(0, 3).join(", ")}${missing.length > 3 ? ", …" : ""}`);
    }
    shards = shards.filter((file) => named.includes(file.name));
  }
  shards.sort((a, b) => a.name.localeCompare(b.name));
  const headers = [];
  let total = indexBytes ? indexBytes.length : 0;
  for (const file of shards) {
    const start = await fileBytes(file, 0, 4);
    const gguf = start.length === 4 && String.fromCharCode(...start) === "GGUF";
    const bytes = gguf ? await ggufHeader(file) : await safetensorsHeader(file);
    total += bytes.length;
    if (total > MAX_CHECKPOINT_FORM_BYTES) {
      throw new FieldProblem("checkpoint", `the headers come to ${thousands(total)} bytes, past the ${thousands(MAX_CHECKPOINT_FORM_BYTES)}-byte limit`);
    }
    headers.push({ file: file.name, bytes });
  }
  return { headers: { files: headers, index: indexBytes }, headerBytes: total,
           fileBytes: shards.reduce((sum, file) => sum + file.size, 0) };
}

function chooseCheckpoint() {
  const input = $("checkpoint-files");
  const files = [...input.files];
  $("err-checkpoint-files").textContent = "";
  input.removeAttribute("aria-invalid");
  checkpointHeaders = null;
  $("checkpoint-clear").hidden = !files.length;
  if (!files.length) { $("checkpoint-note").textContent = ""; syncFormat(); return; }
  $("checkpoint-note").textContent = "Reading the headers…";
  $("plan-button").disabled = true;
  checkpointReading = checkpointFromFiles(files).then((read) => {
    checkpointHeaders = read.headers;
    $("checkpoint-note").textContent = `${read.headers.files.length} file(s): ${thousands(read.headerBytes)} header bytes read ` +
      `of ${thousands(read.fileBytes)}; the weights stay on this computer.`;
  }).catch((error) => {
    $("checkpoint-note").textContent = "";
    showProblem(error, PLAN_FIELDS, "plan-error");
  }).finally(() => {
    $("plan-button").disabled = false;
    syncFormat();
  });
}

function forgetCheckpoint() {
  $("checkpoint-files").value = "";
  chooseCheckpoint();
  $("checkpoint-files").focus();
}

function startFormats() {
  $("weight-format").addEventListener("change", pickFormat);
  $("group-size").addEventListener("change", followGroupSize);
  $("kv-dtype").addEventListener("change", () => { kvPickedByUser = $("kv-dtype").value; });
  $("model-preset").addEventListener("change", loadFormats);
  $("model-config").addEventListener("change", loadFormats);
  document.querySelectorAll('input[name="model-source"]').forEach((el) => el.addEventListener("change", loadFormats));
  $("checkpoint-files").addEventListener("change", chooseCheckpoint);
  $("checkpoint-clear").addEventListener("click", forgetCheckpoint);
}

// --- start --------------------------------------------------------------------------------------

// --- checkpoint jobs ----------------------------------------------------------------------------

const JOB_FINISHED = ["succeeded", "failed", "cancelled"];
const JOBS_NOT_CONFIGURED = "urn:nibble:problem:jobs-not-configured";
const JOBS_REFRESH_MS = 5000;
const followedJobs = new Map();  // job id -> the AbortController of its event stream
const mebibytes = (bytes) => (bytes / 2 ** 20).toFixed(1);

function jobProgressText(progress) {
  let text = `${thousands(progress.tensors_done)} of ${thousands(progress.tensors_total)} tensors, `
    + `${mebibytes(progress.bytes_done)} of ${mebibytes(progress.bytes_total)} MiB`;
  if (progress.rate) text += `, ${mebibytes(progress.rate)} MiB/s`;
  if (progress.eta_seconds) text += `, ${Math.ceil(progress.eta_seconds)} s left`;
  return text;
}

function jobItem(id) {
  const existing = [...$("jobs-list").children].find((item) => item.dataset.id === id);
  if (existing) return existing;
  const item = document.createElement("li");
  item.className = "job";
  item.dataset.id = id;
  const title = document.createElement("h3");
  const name = document.createElement("code");
  name.textContent = id.slice(0, 12);
  const state = document.createElement("span");
  state.className = "job-state";
  title.append("Job ", name, " ", state);
  const bar = document.createElement("progress");
  bar.setAttribute("aria-label", `progress of job ${id.slice(0, 12)}`);
  const figures = document.createElement("p");
  figures.className = "job-progress note";
  const notes = document.createElement("ul");  // what an engine will refuse in the result (engine_notes)
  notes.className = "job-notes";
  notes.setAttribute("aria-label", `engine notes of job ${id.slice(0, 12)}`);
  const files = document.createElement("ul");
  files.className = "job-files";
  const error = document.createElement("p");
  error.className = "job-error form-error";
  const cancel = document.createElement("button");
  cancel.type = "button";
  cancel.className = "job-cancel secondary";
  cancel.textContent = "Cancel";
  cancel.addEventListener("click", () => cancelJob(id));
  item.append(title, bar, figures, notes, files, error, cancel);
  return item;
}

function renderJob(status) {
  const item = jobItem(status.id);
  item.dataset.state = status.state;
  item.querySelector(".job-state").textContent = status.state;
  const bar = item.querySelector("progress");
  bar.max = Math.max(1, status.progress.bytes_total);
  bar.value = status.state === "succeeded" ? bar.max : status.progress.bytes_done;
  item.querySelector(".job-progress").textContent = jobProgressText(status.progress);
  item.querySelector(".job-cancel").hidden = JOB_FINISHED.includes(status.state);
  if (status.error) item.querySelector(".job-error").textContent = `${status.error.title}: ${status.error.detail}`;
  if (status.engine_notes) {  // known at submission (a budget's, once its formats are chosen)
    item.querySelector(".job-notes").replaceChildren(...status.engine_notes.map((note) => {
      const entry = document.createElement("li");
      entry.textContent = note;
      return entry;
    }));
  }
  if (status.result) {
    item.querySelector(".job-files").replaceChildren(...status.result.files.map((file) => {
      const entry = document.createElement("li");
      const link = document.createElement("a");
      link.href = file.url;
      link.download = file.name;
      link.textContent = file.name;
      entry.append(link, ` (${thousands(file.bytes)} bytes)`);
      return entry;
    }));
    item.dataset.detailed = "true";
  }
  return item;
}

async function followJob(id) {
  // GET /v1/jobs/{id}/events read through fetch (EventSource cannot send the API key): one status per event
  if (followedJobs.has(id)) return;
  const controller = new AbortController();
  followedJobs.set(id, controller);
  try {
    const response = await api(`/v1/jobs/${id}/events`, { signal: controller.signal });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value.replace(/\r\n/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const data = buffer.slice(0, end).split("\n").filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).trimStart()).join("\n");
        buffer = buffer.slice(end + 2);
        if (data) renderJob(JSON.parse(data));
      }
    }
  } catch (error) {
    if (error.name !== "AbortError") jobItem(id).querySelector(".job-error").textContent = error.message;
  } finally {
    followedJobs.delete(id);
  }
}

async function cancelJob(id) {
  try {
    renderJob(await (await api(`/v1/jobs/${id}`, { method: "DELETE" })).json());
  } catch (error) {
    jobItem(id).querySelector(".job-error").textContent = error.message;
  }
}

async function loadJobs() {
  // Lists GET /v1/jobs; false when this server has no jobs (the section then says so and stays hidden).
  let answer;
  try {
    answer = await (await api("/v1/jobs")).json();
  } catch (error) {
    if (error.problem && error.problem.type === JOBS_NOT_CONFIGURED) {
      $("jobs-note").textContent = "Checkpoint jobs are not configured on this server (they need NIBBLE_STATE_DIR "
        + "and NIBBLE_DATA_DIR).";
      $("jobs-note").hidden = false;
      $("jobs-body").hidden = true;
      return false;
    }
    $("jobs-error").textContent = error.message;
    return true;
  }
  $("jobs-error").textContent = "";
  $("jobs-note").hidden = true;
  $("jobs-body").hidden = false;
  $("jobs-empty").hidden = answer.jobs.length > 0;
  // the server lists a page (100 by default) and says when older jobs follow it: said here too, never cut silently
  $("jobs-more").hidden = !answer.next;
  $("jobs-more").textContent = answer.next ? `The ${answer.jobs.length} newest jobs are shown; older ones follow `
    + `(GET ${answer.next}, or nibble jobs list).` : "";
  const items = answer.jobs.map((summary) => {
    const item = renderJob(summary);
    if (!JOB_FINISHED.includes(summary.state)) followJob(summary.id);
    else if (!item.dataset.detailed) {  // the list carries no files or error: read the job once
      api(summary.url).then((response) => response.json()).then(renderJob).catch(() => {});
    }
    return item;
  });
  $("jobs-list").replaceChildren(...items);
  return true;
}

function fillSelect(select, items, value, label, preferred) {
  select.replaceChildren(...items.map((item) => {
    const option = document.createElement("option");
    option.value = value(item);
    option.textContent = label(item);
    return option;
  }));
  if (items.some((item) => value(item) === preferred)) select.value = preferred;
}

function setUnit(value) {
  unit = value in UNITS ? value : "GiB";
  document.querySelectorAll(".unit-name").forEach((el) => { el.textContent = unit; });
  $("unit-definition").textContent = UNITS[unit].definition;
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
  $("d-output").addEventListener("change", syncOutput);
  $("copy-link").addEventListener("click", copyLink);
  $("jobs-refresh").addEventListener("click", loadJobs);
  loadJobs().then((configured) => { if (configured) setInterval(loadJobs, JOBS_REFRESH_MS); });
  $("unit").addEventListener("change", () => {
    setUnit($("unit").value);
    redrawShown();
    if (shown) writeState();
  });
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
    fillSelect($("device"), devices, (d) => d.id, (d) => `${d.name}, ${(d.memory_bytes / 2 ** 30).toFixed(0)} GiB`, "h100-80gb");
    deviceIds = devices.map((d) => d.id);
    const planNow = readState();
    startFormats();
    await loadFormats();
    setUnit(unit);
    document.body.dataset.ready = "true";
    if (planNow) await runPlan();
  } catch (error) {
    showProblem(error, PLAN_FIELDS, "plan-error");
  }
}

document.addEventListener("DOMContentLoaded", start);
