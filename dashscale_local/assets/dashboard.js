// dashscale Scale tab: polls /_dashscale/api/status every second and renders it.
// No framework, no CDN; all text goes through textContent (commands and event messages
// come from files on disk), the SVG plot is built with createElementNS.
"use strict";
(function () {
  const API = "/_dashscale/api/";
  const POLL_MS = 1000;
  const WINDOW_S = 300;                 // memory plot: at most the last 5 minutes
  const SVGNS = "http://www.w3.org/2000/svg";
  const COLORS = ["#3b6fd8", "#e0732c", "#1f9d55", "#b04fc4", "#d64545", "#1aa6b7",
                  "#8a6d3b", "#e83e8c", "#5c6bc0", "#7cb342"];

  const state = {
    status: null,
    since: 0,                           // newest history sample we have (server time)
    history: new Map(),                 // replica → [[t, bytes], …]
    serverNow: 0,
    dirty: new Set(),                   // type names whose count the user is editing
    busy: false,                        // a scale request is in flight
    rows: new Map(),                    // replica → row elements
    typeRows: new Map(),
    colorOf: new Map(),
    eventsKey: "",
  };

  const $ = (id) => document.getElementById(id);
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function svg(tag, attrs) {
    const e = document.createElementNS(SVGNS, tag);
    for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
    return e;
  }

  function fmtBytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0, v = n;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    if (i === 0) return v + " B";
    const text = v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
    return text.replace(/\.0+$/, "").replace(/(\.\d*?)0+$/, "$1") + " " + units[i];
  }
  function fmtTime(t) {
    const d = new Date(t * 1000);
    return d.toTimeString().slice(0, 8);
  }
  function pctClass(used, limit, down) {
    if (down) return "fill bad";
    if (!limit) return "fill";
    const p = used / limit;
    return p >= 1 ? "fill bad" : p >= 0.8 ? "fill warn" : "fill";
  }
  function colorFor(name) {
    if (!state.colorOf.has(name)) {
      state.colorOf.set(name, COLORS[state.colorOf.size % COLORS.length]);
    }
    return state.colorOf.get(name);
  }

  // -- polling -------------------------------------------------------------------
  async function poll() {
    try {
      const resp = await fetch(API + "status?since=" + state.since,
                               {cache: "no-store", credentials: "same-origin"});
      if (!resp.ok) throw new Error("HTTP " + resp.status);
      const data = await resp.json();
      setLive(true);
      ingestHistory(data);
      state.status = data;
      render(data);
    } catch (err) {
      setLive(false, err);
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }

  function setLive(on, err) {
    const live = $("live");
    live.className = "live " + (on ? "on" : "off");
    live.textContent = on ? "live" : "runner unreachable — retrying";
    if (!on && err) live.title = String(err);
  }

  function ingestHistory(data) {
    state.serverNow = (data.dashboard && data.dashboard.time) || Date.now() / 1000;
    for (const [t, values] of data.memory_history || []) {
      for (const name in values) {
        if (!state.history.has(name)) state.history.set(name, []);
        state.history.get(name).push([t, values[name]]);
      }
      if (t > state.since) state.since = t;
    }
    const cutoff = state.serverNow - WINDOW_S - 5;
    for (const [name, points] of state.history) {
      while (points.length && points[0][0] < cutoff) points.shift();
      if (!points.length) state.history.delete(name);
    }
  }

  // -- rendering -----------------------------------------------------------------
  function render(data) {
    $("formation").textContent = Object.entries(data.formation || {})
      .map(([k, v]) => k + "=" + v).join(",") + "  ·  " + data.proxy.url;
    renderTypes(data);
    renderMemory(data);
    renderReplicas(data);
    renderPlot(data);
    renderEvents(data);
    renderReplicaCheck(data.replica_check);
  }

  // The last `dashscale check --replicas` (kept in the run directory).
  function renderReplicaCheck(rc) {
    const line = $("replica-check"), list = $("replica-check-list");
    const key = rc ? String(rc.time) : "";
    if (line.dataset.key === key) return;
    line.dataset.key = key;
    list.textContent = "";
    if (!rc) { line.textContent = "not run yet"; return; }
    const when = new Date(rc.time * 1000).toLocaleTimeString();
    const names = (rc.replicas || []).map((r) => r.name).join(", ");
    const n = (rc.divergences || []).length;
    line.textContent = (rc.agree ? "replicas agree" : n + " divergence" + (n === 1 ? "" : "s")) +
      " (" + names + ") at " + when;
    line.className = rc.agree ? "ok" : "bad";
    for (const d of (rc.divergences || []).slice(0, 20)) {
      list.appendChild(el("li", null, d.replica + " · " + d.what + ": " + d.detail +
                          " — " + d.cause));
    }
  }

  function renderTypes(data) {
    const box = $("types");
    const caps = data.dashboard || {};
    const types = Object.keys(data.formation || {});
    for (const [name, row] of state.typeRows) {
      if (!types.includes(name)) { row.root.remove(); state.typeRows.delete(name); }
    }
    for (const type of types) {
      let row = state.typeRows.get(type);
      if (!row) { row = makeTypeRow(type); state.typeRows.set(type, row); }
      box.appendChild(row.root);              // keeps the order of the formation
      const reps = data.replicas.filter((r) => r.type === type);
      const ready = reps.filter((r) => r.ready).length;
      const limit = reps.length ? reps[0].memory_limit_bytes : null;
      row.count.textContent = ready + "/" + reps.length + " ready" +
        (limit ? " · limit " + fmtBytes(limit) + " each" : "");
      row.command.textContent = reps.length ? reps[0].command : "";
      row.command.title = row.command.textContent;
      row.input.max = caps.max_per_type || 10;
      if (!state.dirty.has(type) && document.activeElement !== row.input) {
        row.input.value = data.formation[type];
      }
      row.input.classList.toggle("dirty", state.dirty.has(type));
      row.apply.disabled = state.busy || !state.dirty.has(type);
    }
  }

  function makeTypeRow(type) {
    const root = el("div", "type-row");
    root.dataset.type = type;
    root.appendChild(el("div", "type-name", type));
    const editor = el("div", "editor");
    const minus = el("button", "step", "−");
    const input = el("input");
    input.type = "number"; input.min = 0; input.step = 1;
    input.setAttribute("aria-label", "replicas of " + type);
    input.dataset.type = type;
    input.className = "replica-count";
    const plus = el("button", "step", "+");
    const apply = el("button", "primary apply", "Apply");
    apply.dataset.type = type;
    minus.title = "one replica less"; plus.title = "one replica more";
    editor.append(minus, input, plus, apply);
    const info = el("div", "type-info");
    const count = el("div", "", "");
    const command = el("code", "", "");
    info.append(count, command);
    root.append(editor, info);

    const edited = () => {
      const current = state.status ? state.status.formation[type] : null;
      if (String(current) === input.value) state.dirty.delete(type); else state.dirty.add(type);
      input.classList.toggle("dirty", state.dirty.has(type));
      apply.disabled = state.busy || !state.dirty.has(type);
    };
    const step = (d) => {
      const v = Math.max(0, Math.min(Number(input.max) || 10, (parseInt(input.value, 10) || 0) + d));
      input.value = v; edited();
    };
    minus.addEventListener("click", () => step(-1));
    plus.addEventListener("click", () => step(1));
    input.addEventListener("input", edited);
    input.addEventListener("keydown", (ev) => { if (ev.key === "Enter") applyScale(type); });
    apply.addEventListener("click", () => applyScale(type));
    return {root, input, apply, count, command};
  }

  async function post(route, payload) {
    const resp = await fetch(API + route, {
      method: "POST", credentials: "same-origin", cache: "no-store",
      headers: {"Content-Type": "application/json", "X-Dashscale-Request": "1"},
      body: JSON.stringify(payload),
    });
    let data = {};
    try { data = await resp.json(); } catch (e) { /* not JSON */ }
    if (!resp.ok) throw new Error(data.error || ("HTTP " + resp.status));
    return data;
  }

  function message(text, cls) {
    const m = $("scale-message");
    m.textContent = text;
    m.className = "message " + (cls || "");
  }

  async function applyScale(type) {
    const row = state.typeRows.get(type);
    const n = parseInt(row.input.value, 10);
    if (!Number.isInteger(n) || n < 0) { message("enter a whole number ≥ 0", "error"); return; }
    state.busy = true;
    row.apply.disabled = true;
    message("scaling " + type + " to " + n + "… (waiting until new replicas serve)");
    try {
      const data = await post("scale", {formation: {[type]: n}});
      state.dirty.delete(type);
      message("formation is now " + Object.entries(data.formation)
        .map(([k, v]) => k + "=" + v).join(","), "ok");
    } catch (err) {
      message("scale failed: " + err.message, "error");
    } finally {
      state.busy = false;
      if (state.status) renderTypes(state.status);
    }
  }

  async function restartReplica(name) {
    if (!window.confirm("Restart " + name + "?")) return;
    message("restarting " + name + "…");
    try {
      const data = await post("restart", {target: name});
      message("restarted " + data.restarted.join(", "), "ok");
    } catch (err) {
      message("restart failed: " + err.message, "error");
    }
  }

  function renderMemory(data) {
    const m = data.memory;
    const fill = $("total-fill");
    fill.className = pctClass(m.total_bytes, m.max_bytes, false);
    fill.style.width = (m.max_bytes ? Math.min(100, 100 * m.total_bytes / m.max_bytes) : 0) + "%";
    const t = $("total-text");
    t.textContent = "";
    t.append(el("b", "", fmtBytes(m.total_bytes)), " of max " + fmtBytes(m.max_bytes) +
      (m.max_bytes ? " (" + (100 * m.total_bytes / m.max_bytes).toFixed(1) + "%)" : "") +
      " — the sum of the replicas' limits");
    $("memory-metric").textContent = "(" + (m.metric || "pss").toUpperCase() +
      " per replica tree; at the limit: " + (m.on_limit || "stop") + ")";
  }

  function renderReplicas(data) {
    const body = document.querySelector("#replicas tbody");
    const names = data.replicas.map((r) => r.name);
    for (const [name, row] of state.rows) {
      if (!names.includes(name)) { row.tr.remove(); state.rows.delete(name); }
    }
    for (const r of data.replicas) {
      let row = state.rows.get(r.name);
      if (!row) { row = makeReplicaRow(r.name); state.rows.set(r.name, row); }
      body.appendChild(row.tr);
      row.tr.dataset.state = r.state;
      row.tr.dataset.ready = r.ready ? "1" : "0";
      row.state.className = "state " + r.state;
      row.state.textContent = r.state + (r.state === "RUNNING" && !r.ready ? " (not ready)" : "");
      row.pid.textContent = r.pid || "–";
      row.port.textContent = r.port;
      const px = r.proxy || {};
      row.inflight.textContent = px.inflight || 0;
      row.served.textContent = px.served || 0;
      const down = r.state === "OOMKILLED";
      row.fill.className = pctClass(r.memory_bytes, r.memory_limit_bytes, down);
      const pct = r.memory_limit_bytes ? 100 * r.memory_bytes / r.memory_limit_bytes : 0;
      row.fill.style.width = Math.min(100, pct) + "%";
      row.memtext.textContent = fmtBytes(r.memory_bytes) + " / " +
        (r.memory_limit_bytes ? fmtBytes(r.memory_limit_bytes) + " (" + pct.toFixed(0) + "%)" : "no limit");
      row.peak.textContent = fmtBytes(r.peak_memory_bytes);
      row.restarts.textContent = r.restarts;
      row.oom.textContent = r.oom_kills;
      row.oom.classList.toggle("bad", r.oom_kills > 0);
      const ex = r.last_exit;
      row.exit.textContent = ex ? ("exit " + ex.code + (ex.reason ? " " + ex.reason : "") +
        (ex.time ? " at " + fmtTime(ex.time) : "")) : "";
    }
  }

  function makeReplicaRow(name) {
    const tr = el("tr");
    tr.dataset.replica = name;
    const td = (cls) => { const c = el("td", cls); tr.appendChild(c); return c; };
    const nameCell = td("name");
    const swatch = el("span", "swatch");
    swatch.style.background = colorFor(name);
    nameCell.append(swatch, name);
    const state = el("span", "state");
    td("").appendChild(state);
    const row = {tr, state, pid: td("num"), port: td("num"), inflight: td("num inflight"),
                 served: td("num served")};
    const mem = td("mem");
    const bar = el("div", "bar");
    row.fill = el("div", "fill");
    bar.appendChild(row.fill);
    row.memtext = el("div", "memtext");
    mem.append(bar, row.memtext);
    row.peak = td("num"); row.restarts = td("num restarts"); row.oom = td("num oom");
    row.exit = td("exit");
    const btn = el("button", "small", "restart");
    btn.addEventListener("click", () => restartReplica(name));
    td("").appendChild(btn);
    return row;
  }

  function niceStep(range, ticks) {
    const raw = range / ticks;
    const mag = Math.pow(2, Math.floor(Math.log2(raw)));     // bytes: powers of two read well
    for (const m of [1, 2, 4, 8]) if (mag * m >= raw) return mag * m;
    return mag * 8;
  }

  function renderPlot(data) {
    const box = $("plot");
    const width = Math.max(300, box.clientWidth || 800), height = 240;
    const ml = 64, mr = 14, mt = 10, mb = 24;
    const iw = width - ml - mr, ih = height - mt - mb;
    const now = state.serverNow;
    let oldest = now;
    for (const [, pts] of state.history) if (pts.length && pts[0][0] < oldest) oldest = pts[0][0];
    // Zoom to the data while there is little of it: 1, 2, then 5 minutes.
    const span = now - oldest;
    const win = Math.min(WINDOW_S, Math.max(60, Math.ceil((span + 1) / 30) * 30));
    const tickStep = [10, 20, 30, 60].find((st) => win / st <= 7) || 60;
    const t0 = now - win;
    const live = new Set(data.replicas.map((r) => r.name));
    let maxV = 0;
    for (const [, pts] of state.history) for (const [t, v] of pts) if (t >= t0 && v > maxV) maxV = v;
    const limits = [...new Set(data.replicas.map((r) => r.memory_limit_bytes).filter((x) => x))];
    let yMax = Math.max(maxV * 1.15, 16 * 1024 * 1024);
    const shown = limits.filter((l) => l <= Math.max(yMax, maxV) * 1.6);
    for (const l of shown) yMax = Math.max(yMax, l * 1.08);
    const step = niceStep(yMax, 4);
    yMax = Math.ceil(yMax / step) * step;
    const x = (t) => ml + iw * (t - t0) / win;
    const y = (v) => mt + ih * (1 - v / yMax);

    const s = svg("svg", {viewBox: `0 0 ${width} ${height}`, role: "img",
                          "aria-label": "memory per replica over time"});
    for (let v = 0; v <= yMax + 1; v += step) {
      s.appendChild(svg("line", {class: "axis", x1: ml, x2: width - mr, y1: y(v), y2: y(v)}));
      const label = svg("text", {class: "tick", x: ml - 6, y: y(v) + 4, "text-anchor": "end"});
      label.textContent = fmtBytes(v);
      s.appendChild(label);
    }
    for (let ago = 0; ago <= win; ago += tickStep) {
      const edge = ago === 0 ? "end" : ago + tickStep > win && ago === win ? "start" : "middle";
      const label = svg("text", {class: "tick", x: x(now - ago), y: height - 6, "text-anchor": edge});
      label.textContent = ago === 0 ? "now" : ago % 60 === 0 ? "−" + ago / 60 + " min" : "−" + ago + " s";
      s.appendChild(label);
    }
    for (const l of shown) {
      s.appendChild(svg("line", {class: "limit", x1: ml, x2: width - mr, y1: y(l), y2: y(l)}));
      const label = svg("text", {class: "limit-label", x: width - mr - 4, y: y(l) - 4,
                                 "text-anchor": "end"});
      label.textContent = "limit " + fmtBytes(l);
      s.appendChild(label);
    }
    const offScale = limits.filter((l) => !shown.includes(l));
    if (offScale.length) {
      const label = svg("text", {class: "limit-label", x: width - mr - 4, y: mt + 10,
                                 "text-anchor": "end"});
      label.textContent = "limit " + offScale.map(fmtBytes).join(", ") + " (above the scale)";
      s.appendChild(label);
    }
    const legend = $("legend");
    legend.textContent = "";
    let any = false;
    const names = [...state.history.keys()].sort(byReplica);
    for (const name of names) {
      const pts = state.history.get(name).filter(([t]) => t >= t0);
      if (!pts.length) continue;
      any = true;
      const line = svg("polyline", {
        points: pts.map(([t, v]) => x(t).toFixed(1) + "," + y(v).toFixed(1)).join(" "),
        stroke: colorFor(name), "data-replica": name, "data-points": pts.length,
      });
      if (!live.has(name)) line.setAttribute("stroke-opacity", "0.35");
      s.appendChild(line);
      const item = el("span", "", name + " " + fmtBytes(pts[pts.length - 1][1]));
      item.style.setProperty("--c", colorFor(name));
      legend.appendChild(item);
    }
    if (!any) {
      const t = svg("text", {class: "empty", x: ml + iw / 2, y: mt + ih / 2, "text-anchor": "middle"});
      t.textContent = "collecting samples…";
      s.appendChild(t);
    }
    box.replaceChildren(s);
  }

  function byReplica(a, b) {
    const [ta, ia] = a.split("."), [tb, ib] = b.split(".");
    return ta === tb ? Number(ia) - Number(ib) : ta < tb ? -1 : 1;
  }

  function renderEvents(data) {
    const events = data.events || [];
    const key = events.length + ":" + (events.length ? events[events.length - 1].time : "");
    if (key === state.eventsKey) return;
    state.eventsKey = key;
    const list = $("events");
    list.textContent = "";
    for (const ev of events.slice(-40).reverse()) {
      const li = el("li");
      li.dataset.kind = ev.kind;
      const time = el("time", "", fmtTime(ev.time));
      time.dateTime = new Date(ev.time * 1000).toISOString();
      li.append(time, el("span", "kind " + ev.kind, ev.kind), el("span", "", ev.message));
      list.appendChild(li);
    }
    if (!events.length) list.appendChild(el("li", "muted", "no events yet"));
  }

  poll();
})();
