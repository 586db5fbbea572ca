// mpbond's live status page. Reads history.json once (the minutes before
// the page was opened), then status.json every second (the document
// `mpbond status --json` prints) and draws each uplink's rates, round trip
// and state. Everything shown is also in data-* attributes, for scripts
// and tests: each uplink card has data-uplink, data-state, data-up,
// data-rx-bps / data-tx-bps (bytes per second now), data-peak-rx-bps (the
// highest receive rate in the last 10 s of its graph) and data-samples.
"use strict";

const WINDOW_S = 300; // the graphs' widest span, seconds
const MIN_WINDOW_S = 60; // and the narrowest (a daemon that just started)
const POLL_MS = 1000;
const PEAK_S = 10;
const GAP_S = 5; // samples further apart than this are not joined
const STALE_MS = 5000;

const model = {
  status: null,
  uplinks: new Map(), // name -> {samples: [{t, rx, tx, rtt, state}], status}
  events: [],
  changes: new Map(), // name -> state_changes last seen
  clients: new Map(), // id -> {t, up, down, upRate, downRate}
  lastOk: 0,
  error: "",
};

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null) node.setAttribute(k, String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  return node;
}

function rate(bytesPerSec) {
  const bits = (bytesPerSec || 0) * 8;
  if (bits >= 1e9) return (bits / 1e9).toFixed(2) + " Gbit/s";
  if (bits >= 1e6) return (bits / 1e6).toFixed(bits >= 1e8 ? 0 : 1).replace(/\.0$/, "") + " Mbit/s";
  if (bits >= 1e3) return (bits / 1e3).toFixed(0) + " kbit/s";
  return bits.toFixed(0) + " bit/s";
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return (i === 0 ? n.toFixed(0) : n.toFixed(1)) + " " + units[i];
}

function ago(seconds) {
  seconds = Math.max(0, seconds);
  if (seconds < 60) return seconds.toFixed(0) + " s";
  if (seconds < 3600) return (seconds / 60).toFixed(0) + " min";
  if (seconds < 86400) return (seconds / 3600).toFixed(1) + " h";
  return (seconds / 86400).toFixed(1) + " d";
}

function clock(unix) {
  return new Date(unix * 1000).toLocaleTimeString([], { hour12: false });
}

async function getJson(url) {
  const response = await fetch(url, { cache: "no-store" });
  if (!response.ok) throw new Error(url + ": HTTP " + response.status);
  return response.json();
}

function loadHistory(history) {
  for (const u of history.uplinks || []) {
    const samples = (u.samples || []).map((s) => ({
      t: s.unix,
      rx: s.rx_bytes_per_sec,
      tx: s.tx_bytes_per_sec,
      rtt: s.rtt_ms,
      state: s.state,
    }));
    const known = model.uplinks.get(u.name);
    if (known) {
      // Keep what the page polled since; the history is older.
      const first = known.samples.length ? known.samples[0].t : Infinity;
      known.samples = samples.filter((s) => s.t < first - 0.5).concat(known.samples);
    } else {
      model.uplinks.set(u.name, { samples, status: null });
    }
  }
  model.events = history.events || [];
}

function refreshEvents() {
  getJson("history.json")
    .then((h) => {
      model.events = h.events || [];
      render();
    })
    .catch(() => {});
}

function follow(status) {
  model.status = status;
  const now = status.now_unix;
  if (status.client) {
    const names = new Set();
    let changed = false;
    for (const u of status.client.uplinks) {
      names.add(u.name);
      let m = model.uplinks.get(u.name);
      if (!m) {
        m = { samples: [], status: null };
        model.uplinks.set(u.name, m);
      }
      m.status = u;
      const last = m.samples[m.samples.length - 1];
      if (!last || now - last.t >= 0.5) {
        m.samples.push({
          t: now,
          rx: u.rx_bytes_per_sec,
          tx: u.tx_bytes_per_sec,
          rtt: u.rtt_ms,
          state: u.state,
        });
      }
      while (m.samples.length && m.samples[0].t < now - WINDOW_S) m.samples.shift();
      const seen = model.changes.get(u.name);
      if (seen !== undefined && seen !== u.state_changes) changed = true;
      model.changes.set(u.name, u.state_changes);
    }
    for (const name of [...model.uplinks.keys()]) {
      if (!names.has(name)) model.uplinks.delete(name);
    }
    if (changed) refreshEvents();
  }
  if (status.concentrator) {
    for (const c of status.concentrator.clients) {
      const before = model.clients.get(c.id);
      const entry = { t: now, up: c.up_bytes, down: c.down_bytes, upRate: 0, downRate: 0 };
      if (before && now > before.t) {
        entry.upRate = Math.max(0, (c.up_bytes - before.up) / (now - before.t));
        entry.downRate = Math.max(0, (c.down_bytes - before.down) / (now - before.t));
      }
      model.clients.set(c.id, entry);
    }
  }
}

async function poll() {
  try {
    follow(await getJson("status.json"));
    model.lastOk = Date.now();
    model.error = "";
  } catch (e) {
    model.error = e.message || String(e);
  }
  render();
  setTimeout(poll, POLL_MS);
}

function fact(value, label, attrs) {
  return el("div", Object.assign({ class: "fact" }, attrs || {}), el("b", {}, value), el("span", {}, label));
}

function renderHeader(s) {
  document.getElementById("role").textContent = s ? s.role : "";
  const live = document.getElementById("live");
  const fresh = model.lastOk && Date.now() - model.lastOk < STALE_MS;
  document.body.dataset.live = fresh ? "ok" : model.lastOk ? "stale" : "loading";
  if (fresh) {
    live.textContent = "live · " + clock(s.now_unix);
  } else if (model.lastOk) {
    live.textContent = "no answer since " + new Date(model.lastOk).toLocaleTimeString([], { hour12: false }) +
      (model.error ? " (" + model.error + ")" : "");
  } else {
    live.textContent = model.error ? "cannot reach the daemon: " + model.error : "connecting…";
  }
  if (!s) return;
  const who = document.getElementById("who");
  const up = "running " + ago(s.now_unix - s.started_unix) + " · v" + s.mpbond_version;
  if (s.client) who.textContent = "client " + s.client.id + " → " + s.client.concentrator + " · " + up;
  else if (s.concentrator) who.textContent = "concentrator on " + s.concentrator.listen + " · " + up;
  document.title = "mpbond " + s.role + (s.client ? " " + s.client.id : "");
}

function renderOverview(s) {
  const box = document.getElementById("overview");
  const facts = [];
  if (s.client) {
    const c = s.client;
    const total = c.uplinks.reduce((a, u) => a + (u.rx_bytes_per_sec || 0), 0);
    const totalUp = c.uplinks.reduce((a, u) => a + (u.tx_bytes_per_sec || 0), 0);
    const carrying = c.uplinks.filter((u) => u.state !== "dead").length;
    facts.push(fact(rate(total), "down, all uplinks", { "data-rx-bps": total }));
    facts.push(fact(rate(totalUp), "up, all uplinks", { "data-tx-bps": totalUp }));
    facts.push(fact(carrying + " of " + c.uplinks.length, "uplinks up", { "data-uplinks-up": carrying }));
    facts.push(fact(c.relayed, "connections", { id: "connections", "data-connections": c.relayed }));
    facts.push(fact(c.flows, "LAN flows", { "data-flows": c.flows }));
    if (c.datagram) {
      const hs = c.datagram.last_handshake_unix;
      facts.push(fact(c.datagram.session ? "up" : "down",
        "datagram tunnel" + (hs ? ", handshake " + ago(s.now_unix - hs) + " ago" : ""),
        { "data-session": c.datagram.session }));
    }
  } else if (s.concentrator) {
    const k = s.concentrator;
    facts.push(fact(k.connections + " / " + k.connection_limit, "connections", { id: "connections", "data-connections": k.connections }));
    facts.push(fact(k.clients.length, "clients configured"));
    facts.push(fact(k.handshakes, "handshakes in progress"));
    const rejected = Object.values(k.rejected || {}).reduce((a, n) => a + n, 0);
    facts.push(fact(rejected, "peers rejected"));
    facts.push(fact(k.multipath ? "MPTCP" : "plain TCP", "listener"));
  }
  box.replaceChildren(...facts);
}

function niceScale(max) {
  // Bits per second, rounded up to 1, 2 or 5 times a power of ten.
  const bits = Math.max(max * 8, 8000);
  const step = Math.pow(10, Math.floor(Math.log10(bits)));
  for (const m of [1, 2, 5, 10]) {
    if (bits <= m * step) return (m * step) / 8;
  }
  return (10 * step) / 8;
}

function segments(samples) {
  const out = [];
  let current = [];
  for (const s of samples) {
    const last = current[current.length - 1];
    if (last && s.t - last.t > GAP_S) {
      out.push(current);
      current = [];
    }
    current.push(s);
  }
  if (current.length) out.push(current);
  return out;
}

function chart(name, samples, now, scale, windowS) {
  const W = 300;
  const H = 100;
  const x = (t) => (((t - (now - windowS)) / windowS) * W).toFixed(2);
  const y = (v) => (H - Math.min(1, (v || 0) / scale) * (H - 2)).toFixed(2);
  const root = svg("svg", {
    class: "chart",
    viewBox: "0 0 " + W + " " + H,
    preserveAspectRatio: "none",
    role: "img",
    "aria-label": name + ": receive and send rates, last " + windowS / 60 + " minutes",
  });
  for (const f of [0.25, 0.5, 0.75]) {
    root.append(svg("line", { class: "grid", x1: 0, x2: W, y1: H * f, y2: H * f }));
  }
  // Shade the time the line was dead (or suspect).
  for (let i = 0; i < samples.length; i++) {
    const s = samples[i];
    if (s.state !== "dead" && s.state !== "suspect") continue;
    const next = samples[i + 1];
    const end = next && next.t - s.t <= GAP_S ? next.t : s.t + 1;
    const x0 = Number(x(s.t));
    root.append(svg("rect", {
      class: s.state === "dead" ? "down" : "suspect",
      x: x0, y: 0, width: Math.max(0.5, Number(x(end)) - x0), height: H,
    }));
  }
  for (const seg of segments(samples)) {
    const rx = seg.map((s) => x(s.t) + "," + y(s.rx)).join(" L");
    root.append(svg("path", {
      class: "rx",
      d: "M" + x(seg[0].t) + "," + H + " L" + rx + " L" + x(seg[seg.length - 1].t) + "," + H + " Z",
    }));
    root.append(svg("path", { class: "tx", d: "M" + seg.map((s) => x(s.t) + "," + y(s.tx)).join(" L") }));
  }
  return root;
}

function renderUplinks(s) {
  const box = document.getElementById("uplinks");
  if (!s.client) {
    box.replaceChildren();
    return;
  }
  const now = s.now_unix;
  let max = 0;
  let oldest = now;
  for (const m of model.uplinks.values()) {
    for (const p of m.samples) max = Math.max(max, p.rx || 0, p.tx || 0);
    if (m.samples.length) oldest = Math.min(oldest, m.samples[0].t);
  }
  const scale = niceScale(max);
  // All the graphs span the same time: what there is, in whole minutes.
  const windowS = Math.min(WINDOW_S, Math.max(MIN_WINDOW_S, Math.ceil((now - oldest) / 60) * 60));
  const cards = s.client.uplinks.map((u) => {
    const m = model.uplinks.get(u.name) || { samples: [] };
    const recent = m.samples.filter((p) => p.t >= now - PEAK_S);
    const peak = recent.reduce((a, p) => Math.max(a, p.rx || 0), 0);
    const up = u.state !== "dead";
    const meta = [u.interface, u.address || "no address"];
    if (u.backup) meta.push("backup");
    meta.push(u.endpoint ? "subflows in use" : "no subflows");
    const rtt = u.rtt_ms === null || u.rtt_ms === undefined ? "–" : u.rtt_ms.toFixed(0) + " ms";
    const since = u.state_changes === 0
      ? u.state + " since start"
      : u.state + " for " + ago(now - u.changed_unix) + " (since " + clock(u.changed_unix) + "): " + u.reason;
    return el("article", {
      class: "card uplink",
      "data-uplink": u.name,
      "data-state": u.state,
      "data-up": up,
      "data-rx-bps": u.rx_bytes_per_sec,
      "data-tx-bps": u.tx_bytes_per_sec,
      "data-peak-rx-bps": peak,
      "data-rtt-ms": u.rtt_ms === null || u.rtt_ms === undefined ? "" : u.rtt_ms.toFixed(1),
      "data-samples": m.samples.length,
    },
      el("header", {}, el("h2", {}, u.name), el("span", { class: "badge " + u.state }, up ? u.state : "down (dead)")),
      el("p", { class: "meta" }, meta.join(" · ")),
      el("dl", { class: "numbers" },
        el("div", { class: "rx" }, el("dt", {}, "down"), el("dd", {}, rate(u.rx_bytes_per_sec))),
        el("div", { class: "tx" }, el("dt", {}, "up"), el("dd", {}, rate(u.tx_bytes_per_sec))),
        el("div", {}, el("dt", {}, "RTT"), el("dd", {}, rtt)),
        el("div", {}, el("dt", {}, "loss"), el("dd", {}, ((u.loss || 0) * 100).toFixed(1) + " %"))),
      chart(u.name, m.samples, now, scale, windowS),
      el("div", { class: "axis" },
        el("span", {}, "−" + windowS / 60 + " min"),
        el("span", {}, el("span", { class: "rx" }, "■ down"), " ", el("span", { class: "tx" }, "— up"),
          " · top " + rate(scale)),
        el("span", {}, "now")),
      el("p", { class: "why" }, since));
  });
  box.replaceChildren(...cards);
}

function renderClients(s) {
  const box = document.getElementById("clients");
  if (!s.concentrator) {
    box.hidden = true;
    return;
  }
  box.hidden = false;
  const rows = s.concentrator.clients.map((c) => {
    const r = model.clients.get(c.id) || { upRate: 0, downRate: 0 };
    const session = c.datagram ? (c.datagram.session ? "up" : "down") : "–";
    return el("tr", { "data-client": c.id, "data-connections": c.connections },
      el("td", {}, c.id),
      el("td", {}, c.connections + " / " + c.max_connections),
      el("td", {}, el("span", {}, rate(r.downRate)), el("span", { class: "muted" }, bytes(c.down_bytes))),
      el("td", {}, el("span", {}, rate(r.upRate)), el("span", { class: "muted" }, bytes(c.up_bytes))),
      el("td", {}, session));
  });
  const table = el("table", {},
    el("thead", {}, el("tr", {},
      el("th", {}, "client"), el("th", {}, "connections"), el("th", {}, "down"),
      el("th", {}, "up"), el("th", {}, "datagrams"))),
    el("tbody", {}, ...rows));
  box.replaceChildren(el("h2", {}, "Clients"), el("div", { class: "scroll" }, table));
}

function renderEvents(s) {
  const section = document.getElementById("changes");
  section.hidden = !s.client;
  const list = document.getElementById("events");
  const items = model.events.slice().reverse().map((e) =>
    el("li", { "data-uplink": e.uplink, "data-from": e.from, "data-to": e.to },
      el("time", { datetime: new Date(e.unix * 1000).toISOString() }, clock(e.unix)),
      el("b", {}, e.uplink), " ", e.from, " → ",
      el("span", { class: "to-" + e.to }, e.to), ": ", e.reason));
  if (!items.length) items.push(el("li", { class: "muted" }, "none since the daemon started"));
  list.replaceChildren(...items);
}

function render() {
  const s = model.status;
  renderHeader(s);
  if (!s) return;
  renderOverview(s);
  renderUplinks(s);
  renderClients(s);
  renderEvents(s);
}

async function start() {
  try {
    loadHistory(await getJson("history.json"));
  } catch (e) {
    // The page still follows the status from now on.
  }
  poll();
}

start();
