// cvret draw-to-search page: plain JS, no dependencies, talks only to its own server's /api.
"use strict";

const $ = (id) => document.getElementById(id);
const canvas = $("canvas");
const ctx = canvas.getContext("2d");
const DEBOUNCE_MS = 300;

const state = {
  token: sessionStorage.getItem("cvret-token") || tokenFromHash(),
  info: null,
  tab: "single",            // "single", or a viewpoint name in several-views mode
  histories: { single: [] }, // drawing operations per tab: strokes and uploaded images
  stroke: null,
  timer: null,
  pending: false,           // a search is scheduled but not started
  seq: 0,
  controller: null,
  thumbs: new Map(),
};

function tokenFromHash() {
  const m = location.hash.match(/token=([^&]+)/);
  return m ? decodeURIComponent(m[1]) : null;
}

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (state.token) h["Authorization"] = "Bearer " + state.token;
  return h;
}

function setStatus(text, isError) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", !!isError);
}

async function api(path, options) {
  const resp = await fetch(path, Object.assign({}, options, { headers: headers(options && options.headers) }));
  if (resp.status === 401) $("token-box").hidden = false;
  let data = null;
  try { data = await resp.json(); } catch (e) { data = { error: resp.status + " " + resp.statusText }; }
  if (!resp.ok) throw new Error(data.error || resp.statusText);
  return data;
}

// ------------------------------------------------------------------ drawing
function history() {
  if (!state.histories[state.tab]) state.histories[state.tab] = [];
  return state.histories[state.tab];
}

function paint(target, ops) {
  const c = target.getContext("2d");
  c.fillStyle = "#fff";
  c.fillRect(0, 0, target.width, target.height);
  for (const op of ops) {
    if (op.type === "image") {
      const s = Math.min(target.width / op.img.width, target.height / op.img.height);
      const w = op.img.width * s, h = op.img.height * s;
      c.drawImage(op.img, (target.width - w) / 2, (target.height - h) / 2, w, h);
    } else {
      strokePath(c, op, 0);
    }
  }
}

function strokePath(c, op, from) {
  c.strokeStyle = c.fillStyle = op.tool === "eraser" ? "#fff" : "#000";
  c.lineWidth = op.width;
  c.lineCap = c.lineJoin = "round";
  const p = op.points;
  if (p.length === 1) {
    c.beginPath();
    c.arc(p[0][0], p[0][1], op.width / 2, 0, 2 * Math.PI);
    c.fill();
    return;
  }
  c.beginPath();
  const start = Math.max(0, from - 1);
  c.moveTo(p[start][0], p[start][1]);
  for (let i = start + 1; i < p.length; i++) c.lineTo(p[i][0], p[i][1]);
  c.stroke();
}

function redraw() {
  paint(canvas, history());
  updateTabs();
}

function point(e) {
  const r = canvas.getBoundingClientRect();
  return [(e.clientX - r.left) * canvas.width / r.width, (e.clientY - r.top) * canvas.height / r.height];
}

canvas.addEventListener("pointerdown", (e) => {
  if (e.button !== 0) return;
  canvas.setPointerCapture(e.pointerId);
  const tool = document.querySelector("input[name=tool]:checked").value;
  state.stroke = { type: "stroke", tool, width: Number($("width").value), points: [point(e)] };
  strokePath(ctx, state.stroke, 0);
});
canvas.addEventListener("pointermove", (e) => {
  if (!state.stroke) return;
  state.stroke.points.push(point(e));
  strokePath(ctx, state.stroke, state.stroke.points.length - 1);
  schedule();
});
function endStroke() {
  if (!state.stroke) return;
  history().push(state.stroke);
  state.stroke = null;
  updateTabs();
  schedule();
}
canvas.addEventListener("pointerup", endStroke);
canvas.addEventListener("pointercancel", endStroke);

function undo() {
  history().pop();
  redraw();
  schedule();
}
$("undo").addEventListener("click", undo);
$("clear").addEventListener("click", () => {
  state.histories[state.tab] = [];
  redraw();
  schedule();
});
document.addEventListener("keydown", (e) => {
  if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === "z" && !e.target.matches("input, select")) {
    e.preventDefault();
    undo();
  }
});

function loadFile(file) {
  if (!file) return;
  const url = URL.createObjectURL(file);
  const img = new Image();
  img.onload = () => {
    state.histories[state.tab] = [{ type: "image", img }];
    redraw();
    schedule();
  };
  img.onerror = () => setStatus(file.name + ": the browser cannot read this image", true);
  img.src = url;
}
$("upload").addEventListener("change", (e) => { loadFile(e.target.files[0]); e.target.value = ""; });
canvas.addEventListener("dragover", (e) => { e.preventDefault(); canvas.classList.add("dragover"); });
canvas.addEventListener("dragleave", () => canvas.classList.remove("dragover"));
canvas.addEventListener("drop", (e) => {
  e.preventDefault();
  canvas.classList.remove("dragover");
  loadFile(e.dataTransfer.files[0]);
});

// ------------------------------------------------------------------ several views
function updateTabs() {
  const box = $("view-tabs");
  if ($("mode").value !== "views") { box.hidden = true; return; }
  box.hidden = false;
  box.replaceChildren(...state.info.viewpoints.map((vp) => {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = vp.name;
    b.className = (vp.name === state.tab ? "active " : "") + ((state.histories[vp.name] || []).length ? "inked" : "");
    b.addEventListener("click", () => { state.tab = vp.name; redraw(); });
    return b;
  }));
}

$("mode").addEventListener("change", () => {
  const several = $("mode").value === "views";
  state.tab = several ? state.info.viewpoints[0].name : "single";
  $("viewpoint-label").hidden = several;
  redraw();
  schedule();
});

// ------------------------------------------------------------------ searching
// body[data-busy] is "1" from a change until its results (or error) are shown: tests wait on it.
function schedule() {
  clearTimeout(state.timer);
  document.body.dataset.busy = "1";
  state.pending = true;
  state.timer = setTimeout(search, DEBOUNCE_MS);
}

function idle(seq) {
  if (!state.pending && (seq === undefined || seq === state.seq)) document.body.dataset.busy = "0";
}
for (const id of ["domain", "viewpoint", "pairs", "k"]) $(id).addEventListener("change", schedule);

function snapshot(ops) {
  const off = document.createElement("canvas");
  off.width = canvas.width;
  off.height = canvas.height;
  paint(off, ops);
  return off.toDataURL("image/png");
}

async function search() {
  state.pending = false;
  const k = Math.max(1, Math.min(100, Number($("k").value) || 12));
  const common = { k, domain: $("domain").value };
  let path, body;
  if ($("mode").value === "views") {
    const views = {};
    for (const vp of state.info.viewpoints) {
      const ops = state.histories[vp.name] || [];
      if (ops.length) views[vp.name] = snapshot(ops);
    }
    if (!Object.keys(views).length) { cancel(); showResults(null); setStatus("draw a view"); return idle(); }
    path = "/api/search-views";
    body = Object.assign({ views, name: "canvas" }, common);
  } else {
    if (!history().length) { cancel(); showResults(null); setStatus("draw a sketch, or upload one"); return idle(); }
    path = "/api/search";
    body = Object.assign({ image: snapshot(history()), name: "canvas", viewpoint: $("viewpoint").value,
                           pairs: $("pairs").value === "true" }, common);
  }
  cancel();
  state.controller = new AbortController();
  const seq = state.seq;
  const t0 = performance.now();
  setStatus("searching…");
  try {
    const data = await api(path, { method: "POST", body: JSON.stringify(body), signal: state.controller.signal,
                                   headers: { "Content-Type": "application/json" } });
    if (seq !== state.seq) return;
    showResults(data);
    const left = data.excluded_shapes ? ` (${data.excluded_shapes} shapes lack one of the drawn viewpoints)` : "";
    setStatus(`${data.hits.length} results in ${Math.round(performance.now() - t0)} ms${left}`);
  } catch (e) {
    if (e.name === "AbortError" || seq !== state.seq) return;
    showResults(null);
    setStatus(e.message, true);
  }
  idle(seq);
}

function cancel() {
  if (state.controller) state.controller.abort();
  state.controller = null;
  state.seq++;
}

async function thumbnail(img, url) {
  if (!state.token) { img.src = url; return; }
  if (!state.thumbs.has(url)) {
    state.thumbs.set(url, fetch(url, { headers: headers() }).then((r) => r.ok ? r.blob() : null)
      .then((b) => b && URL.createObjectURL(b)));
  }
  const src = await state.thumbs.get(url);
  if (src) img.src = src;
}

function showResults(data) {
  const grid = $("results");
  if (!data) { grid.replaceChildren(); return; }
  grid.replaceChildren(...data.hits.map((h, i) => {
    const fig = document.createElement("figure");
    fig.className = "hit";
    Object.assign(fig.dataset, { rank: h.rank, shape: h.shape, domain: h.domain, viewpoint: h.viewpoint });
    const img = document.createElement("img");
    img.alt = `${h.shape} ${h.viewpoint}`;
    thumbnail(img, data.thumbnails[i]);
    const cap = document.createElement("figcaption");
    const line = (cls, text) => { const s = document.createElement("span"); s.className = cls; s.textContent = text; return s; };
    cap.append(line("rank", "#" + h.rank), line("shape", h.shape), document.createElement("br"),
               line("meta", `${h.category || "–"} · ${h.viewpoint}`), document.createElement("br"),
               line("dist", "d = " + (h.distance < 1e-3 ? h.distance.toExponential(3) : h.distance.toPrecision(4))));
    fig.append(img, cap);
    return fig;
  }));
}

// ------------------------------------------------------------------ start
async function start() {
  try {
    state.info = await api("/api/info");
  } catch (e) {
    setStatus(e.message, true);
    return;
  }
  const info = state.info;
  const weights = String(info.fingerprint.weights || "");
  $("index-info").textContent = `${info.index} · ${info.shapes} shapes · ${info.views} views · weights ${weights}`;
  $("banner").hidden = !weights.startsWith("untrained");
  const domains = Object.keys(info.domains);
  $("domain").replaceChildren(...domains.map((d) => new Option(d, d, false, d === "npr")));
  $("viewpoint").replaceChildren(new Option("all", ""), ...info.viewpoints.map((vp) => new Option(vp.name, vp.name)));
  redraw();
  setStatus("draw a sketch, or upload one");
  document.body.dataset.ready = "1";
  idle();
}

$("token-box").addEventListener("submit", (e) => {
  e.preventDefault();
  state.token = $("token").value.trim() || null;
  if (state.token) sessionStorage.setItem("cvret-token", state.token);
  $("token-box").hidden = true;
  state.thumbs.clear();
  start();
});

start();
