// anomaly-agent web page: plain JavaScript, no build step, nothing loaded from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { file: null, refs: [], record: null, session: null, info: null, blobs: [] };

// --- HTTP helpers (the API key, when the server has one, travels as a bearer token) -------------
function headers(extra) {
  const h = Object.assign({}, extra || {});
  const key = localStorage.getItem("anomalyAgentKey");
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

async function api(path, options) {
  const opts = Object.assign({}, options || {});
  opts.headers = headers(opts.headers);
  const reply = await fetch(path, opts);
  if (reply.status === 401) askKey();
  if (!reply.ok) throw await apiError(reply);
  return reply.json();
}

async function apiError(reply) {
  let text = "HTTP " + reply.status;
  try {
    const body = await reply.json();
    if (body.error) text = body.error.message + (body.error.fix ? "\nFix: " + body.error.fix : "");
  } catch (e) { /* not JSON */ }
  return new Error(text);
}

async function imageUrl(path) {
  const reply = await fetch(path, { headers: headers() });
  if (!reply.ok) return "";
  const url = URL.createObjectURL(await reply.blob());
  state.blobs.push(url);
  return url;
}

// Server-sent events over fetch (POST bodies and auth headers, which EventSource cannot send).
async function streamEvents(path, options, onEvent) {
  const opts = Object.assign({}, options);
  opts.headers = headers(Object.assign({ Accept: "text/event-stream" }, opts.headers || {}));
  const reply = await fetch(path, opts);
  if (reply.status === 401) askKey();
  if (!reply.ok) throw await apiError(reply);
  const reader = reply.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let type = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) type = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (data) onEvent(type, JSON.parse(data));
    }
  }
}

function askKey() {
  $("keyButton").hidden = false;
  const key = window.prompt("This server needs an API key (sent as a bearer token):");
  if (key) { localStorage.setItem("anomalyAgentKey", key); location.reload(); }
}

// --- start ------------------------------------------------------------------------------------
async function loadInfo() {
  try {
    const info = await api("/v1/info");
    state.info = info;
    const pill = $("backend");
    pill.textContent = info.backend === "none" ? "tools only" : "model: " + info.backend;
    pill.title = info.backend_note || "";
    pill.className = "pill ok";
  } catch (e) {
    $("backend").textContent = "not ready";
    $("backend").className = "pill warn";
    setTimeout(loadInfo, 2000);
  }
  try {
    const stats = await api("/v1/memory/stats");
    $("categories").innerHTML = Object.keys(stats.categories)
      .map((c) => `<option value="${escapeHtml(c)}">`).join("");
  } catch (e) { /* no memory */ }
  loadRecent();
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

// --- input ------------------------------------------------------------------------------------
function setFile(file) {
  if (!file) return;
  state.file = file;
  const preview = $("dropPreview");
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  $("dropText").innerHTML = `<strong>${escapeHtml(file.name)}</strong> · click or drop to change`;
  $("judge").disabled = false;
}

function refMode() { return document.querySelector("input[name=refmode]:checked").value; }

function wireInput() {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => setFile(e.target.files[0]));
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") $("file").click(); });
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const type of ["dragleave", "drop"]) {
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  }
  drop.addEventListener("drop", (e) => setFile(e.dataTransfer.files[0]));
  $("refs").addEventListener("change", (e) => {
    state.refs = Array.from(e.target.files);
    $("refsText").textContent = state.refs.length ? `${state.refs.length} reference image(s) selected` : "Add normal reference images…";
  });
  for (const radio of document.querySelectorAll("input[name=refmode]")) {
    radio.addEventListener("change", () => { $("refsPick").hidden = refMode() !== "upload"; });
  }
  $("judge").addEventListener("click", judge);
}

function step(text, running) {
  const li = document.createElement("li");
  li.textContent = text;
  if (running) li.className = "run";
  const list = $("steps");
  for (const old of list.querySelectorAll("li.run")) old.classList.remove("run");
  list.appendChild(li);
}

async function judge() {
  const error = $("inputError");
  error.hidden = true;
  $("steps").innerHTML = "";
  const form = new FormData();
  form.append("images", state.file, state.file.name);
  const category = $("category").value.trim();
  if (category) form.append("category", category);
  if (refMode() === "memory") form.append("references", "memory");
  if (refMode() === "upload") for (const f of state.refs) form.append("references", f, f.name);
  $("judge").disabled = true;
  step("uploading", true);
  let record = null;
  try {
    await streamEvents("/v1/detect", { method: "POST", body: form }, (type, data) => {
      if (type === "started") step("judging " + data.image, true);
      else if (type === "survey_started") step("survey: " + (data.tools.join(", ") || "no tools"), true);
      else if (type === "tool") step(`${data.tool}: ${data.score == null ? "done" : "score " + data.score.toFixed(2)}`, true);
      else if (type === "model_turn") step("model: " + (data.tool_calls.length ? "calls " + data.tool_calls.map((c) => c.name).join(", ") : "answers"), true);
      else if (type === "verdict") record = data.record;
      else if (type === "error") throw new Error(data.error.message + "\nFix: " + data.error.fix);
    });
    step("verdict ready", false);
    if (!record) throw new Error("the stream ended without a verdict");
    if (record.status !== "ok") throw new Error(record.error);
    await showRecord(record);
    loadRecent();
  } catch (e) {
    error.textContent = e.message;
    error.hidden = false;
  } finally {
    $("judge").disabled = !state.file;
    for (const old of $("steps").querySelectorAll("li.run")) old.classList.remove("run");
  }
}

// --- verdict ----------------------------------------------------------------------------------
async function showRecord(record) {
  for (const url of state.blobs.splice(0)) URL.revokeObjectURL(url);
  state.record = record;
  state.session = null;
  $("messages").innerHTML = "";
  $("fbStatus").textContent = "";
  $("fbNote").value = "";
  $("fbUndo").hidden = true;
  state.feedbackExample = null;
  $("empty").hidden = true;
  $("result").hidden = false;
  $("verdictImage").textContent = `${record.image}${record.category ? " · " + record.category : ""}`;
  $("verdictScore").textContent = record.pred_score.toFixed(2);
  $("meterFill").style.width = (record.pred_score * 100).toFixed(1) + "%";
  $("threshold").value = record.threshold;
  const took = record.timings && record.timings.total_ms ? ` · ${(record.timings.total_ms / 1000).toFixed(2)} s` : "";
  const disputed = record.disputed ? "DISPUTED: the model disagreed with the measured evidence (see the explanation) · " : "";
  $("verdictMeta").textContent = `${disputed}score from ${record.score_source} · policy ${record.policy || "?"} · backend ${record.backend || "?"}${took} · run ${record.run_id.slice(0, 8)}`;
  $("coverageHint").textContent = record.coverage_hint || "";
  $("coverageHint").hidden = !record.coverage_hint;
  relabel();
  $("explanation").textContent = record.explanation;
  $("evidence").innerHTML = (record.evidence || []).map((e) =>
    `<tr><td>${escapeHtml(e.tool)}</td><td>${e.score == null ? "–" : e.score.toFixed(2)}</td><td>${escapeHtml(e.summary)}</td></tr>`).join("");
  const image = $("stageImage");
  image.src = await imageUrl(record.image_url);
  const heat = $("stageHeat");
  heat.src = record.heat ? await imageUrl(record.heat) : "";
  heat.hidden = !record.heat || !$("heatToggle").checked;
  await new Promise((resolve) => { if (image.complete) resolve(); else image.onload = resolve; });
  drawBoxes();
}

function relabel() {
  const record = state.record;
  if (!record) return;
  const t = parseFloat($("threshold").value);
  const label = record.pred_score >= t ? "anomalous" : "normal";
  $("thresholdValue").textContent = t.toFixed(2);
  $("meterMark").style.left = (t * 100).toFixed(1) + "%";
  $("verdictCard").dataset.label = label;
  $("verdictLabel").textContent = label.toUpperCase();
}

function fitImage() {
  // small parts are shown enlarged: the image fills the stage's width, at most 440 px (60% of the screen) high
  const image = $("stageImage");
  const w = image.naturalWidth || 1, h = image.naturalHeight || 1;
  const room = $("stage").clientWidth;
  const scale = Math.min(room / w, Math.min(440, window.innerHeight * 0.6) / h);
  image.style.width = Math.round(w * scale) + "px";
  image.style.height = Math.round(h * scale) + "px";
}

function drawBoxes() {
  const record = state.record, image = $("stageImage"), svg = $("stageBoxes");
  const w = image.naturalWidth || 1, h = image.naturalHeight || 1;
  fitImage();
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  const show = $("boxToggle").checked;
  svg.innerHTML = !show ? "" : (record.regions || []).map((r) => {
    const [x0, y0, x1, y1] = r.bbox_xyxy;
    return `<rect x="${x0}" y="${y0}" width="${x1 - x0}" height="${y1 - y0}"><title>${escapeHtml(r.label || "")}</title></rect>`;
  }).join("");
}

function wireVerdict() {
  $("threshold").addEventListener("input", relabel);
  $("heatToggle").addEventListener("change", () => { $("stageHeat").hidden = !$("heatToggle").checked || !state.record.heat; });
  $("boxToggle").addEventListener("change", drawBoxes);
  $("fbRight").addEventListener("click", () => feedback(true));
  $("fbWrong").addEventListener("click", () => feedback(false));
  $("fbUndo").addEventListener("click", undoFeedback);
}

async function feedback(right) {
  const shown = $("verdictCard").dataset.label;
  const label = right ? shown : (shown === "anomalous" ? "normal" : "anomalous");
  const status = $("fbStatus");
  status.className = "small";
  try {
    const body = { label };
    const note = $("fbNote").value.trim();
    if (note) body.note = note;
    const reply = await api(`/v1/runs/${state.record.run_id}/feedback`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    const kind = label === "normal" ? "a normal example (hard normal)" : "a labelled anomaly";
    status.textContent = reply.new
      ? `Thanks: ${reply.message}`
      : `This image was already stored in memory as ${kind} of '${reply.stored.category}'; ${reply.message}`;
    state.feedbackExample = reply.new ? reply.example_id : null;
    $("fbUndo").hidden = !reply.new;
  } catch (e) {
    status.className = "small bad";
    status.textContent = e.message;
  }
}

async function undoFeedback() {
  const status = $("fbStatus");
  if (!state.feedbackExample) return;
  try {
    const reply = await api(`/v1/memory/examples/${state.feedbackExample}`, { method: "DELETE" });
    status.className = "small";
    status.textContent = `Undone: ${reply.message}`;
    state.feedbackExample = null;
    $("fbUndo").hidden = true;
  } catch (e) {
    status.className = "small bad";
    status.textContent = e.message;
  }
}

// --- chat -------------------------------------------------------------------------------------
function bubble(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.textContent = text;
  $("messages").appendChild(div);
  $("messages").scrollTop = $("messages").scrollHeight;
  return div;
}

async function sendChat(event) {
  event.preventDefault();
  const input = $("chatInput");
  const text = input.value.trim();
  if (!text || !state.record) return;
  input.value = "";
  bubble("user", text);
  const answer = bubble("assistant pending", "");
  $("chatSend").disabled = true;
  let path, options;
  if (state.session) {
    path = `/v1/sessions/${state.session}/messages`;
    options = { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ message: text }) };
  } else {
    const form = new FormData();
    form.append("run_id", state.record.run_id);
    form.append("message", text);
    path = "/v1/sessions";
    options = { method: "POST", body: form };
  }
  try {
    await streamEvents(path, options, (type, data) => {
      if (type === "started") state.session = data.session;
      else if (type === "answer_delta") { answer.textContent += data.text; $("messages").scrollTop = $("messages").scrollHeight; }
      else if (type === "reply") answer.textContent = data.answer;
      else if (type === "error") throw new Error(data.error.message + "\nFix: " + data.error.fix);
    });
  } catch (e) {
    answer.textContent = "Error: " + e.message;
  } finally {
    answer.classList.remove("pending");
    $("chatSend").disabled = false;
  }
}

// --- recent runs ------------------------------------------------------------------------------
async function loadRecent() {
  let runs = [];
  try { runs = (await api("/v1/runs?limit=12")).runs; } catch (e) { return; }
  const list = $("recent");
  if (!runs.length) { list.innerHTML = '<li class="muted">No runs yet.</li>'; return; }
  list.innerHTML = "";
  for (const run of runs) {
    const li = document.createElement("li");
    const label = run.status === "ok" ? run.pred_label : "error";
    const score = run.status === "ok" ? run.pred_score.toFixed(2) : "";
    li.innerHTML = `<button type="button"><img alt=""><span class="name">${escapeHtml(run.image || run.run_id)}<br>` +
      `<span class="muted small">${escapeHtml(run.category || "no category")} · ${score}</span></span>` +
      (run.disputed ? '<span class="chip disputed" title="the model disagreed with the measured evidence">disputed</span>' : "") +
      `<span class="chip ${label}">${label}</span></button>`;
    li.querySelector("button").addEventListener("click", async () => {
      if (run.status !== "ok") return;
      await showRecord(await api(`/v1/runs/${run.run_id}`));
      window.scrollTo({ top: 0, behavior: "smooth" });
    });
    list.appendChild(li);
    fetch(run.image_url, { headers: headers() }).then((r) => (r.ok ? r.blob() : null)).then((b) => {
      if (b) li.querySelector("img").src = URL.createObjectURL(b);
    });
  }
}

wireInput();
wireVerdict();
window.addEventListener("resize", () => { if (state.record) fitImage(); });
$("chatForm").addEventListener("submit", sendChat);
$("keyButton").addEventListener("click", askKey);
loadInfo();
