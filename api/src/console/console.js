// The psubd web console. Plain JavaScript, no build step, no external assets: every figure
// it shows comes from this node's public HTTP API (same origin), and rates are derived
// from successive polls of that data. With --auth, the API key is kept in sessionStorage
// and sent as `Authorization: Bearer`.
"use strict";

const KEY_STORAGE = "psubd.apiKey";
const POLL_MS = 2000;
const LAG_WINDOW_MS = 5 * 60 * 1000;
const CHART_COLORS = ["#0b5cad", "#b3261e", "#0a7a45", "#a05a00", "#7b3fa0", "#00838f"];

const view = document.getElementById("view");
const statusLine = document.getElementById("status");

// ---------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------

/** An element: `h("a", {href: "#"}, "text", child)`; `on*` attributes become listeners. */
function h(tag, attrs = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const kid of kids.flat()) {
    if (kid === undefined || kid === null) continue;
    e.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return e;
}

/** A table with a header row and body rows (arrays of cells or `td` elements). */
function table(id, headers, rows) {
  return h("table", {id},
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", {scope: "col", class: x.num ? "num" : null}, x.label ?? x)))),
    h("tbody", {}, rows));
}

function num(value, attrs = {}) {
  return h("td", {...attrs, class: "num" + (attrs.class ? " " + attrs.class : "")},
    value === null || value === undefined ? "–" : value);
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
}

function rate(perSecond) {
  if (perSecond === null || perSecond === undefined) return "–";
  return (perSecond < 10 ? perSecond.toFixed(1) : Math.round(perSecond)) + "/s";
}

function time(ms) {
  return ms === null || ms === undefined ? "–" : new Date(ms).toISOString().replace("T", " ").replace("Z", " UTC");
}

function say(message, isError = false) {
  statusLine.textContent = message;
  statusLine.className = isError ? "error" : "";
}

function enc(name) { return encodeURIComponent(name); }

// ---------------------------------------------------------------------------------------
// The API
// ---------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body, text) {
    super(body && body.message ? `${status} ${body.error}: ${body.message}` : `${status} ${text || ""}`.trim());
    this.status = status;
    this.body = body;
  }
}

function authHeaders() {
  const key = sessionStorage.getItem(KEY_STORAGE);
  return key ? {Authorization: "Bearer " + key} : {};
}

/** Calls the API; resolves to the JSON answer (null for 204); rejects with an ApiError. */
async function api(method, path, body, signal) {
  const headers = authHeaders();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, {
    method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = resp.status === 204 ? "" : await resp.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (_) { json = null; }
  if (resp.status === 401) askForKey();
  if (!resp.ok) throw new ApiError(resp.status, json, text);
  return json;
}

/** This node's Prometheus text as [{name, labels, value}]. */
async function metrics() {
  const resp = await fetch("/metrics");
  if (!resp.ok) throw new ApiError(resp.status, null, "metrics");
  const out = [];
  for (const line of (await resp.text()).split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$/.exec(line);
    if (!m) continue;
    const labels = {};
    for (const l of (m[3] || "").matchAll(/([a-zA-Z_]+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
    out.push({name: m[1], labels, value: Number(m[4])});
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Authentication
// ---------------------------------------------------------------------------------------

const keyForm = document.getElementById("key-form");
const forgetKey = document.getElementById("forget-key");

function askForKey() {
  if (!keyForm.hidden) return;
  keyForm.hidden = false;
  document.getElementById("key-input").focus();
  say("This node needs an API key.", true);
}

keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const input = document.getElementById("key-input");
  sessionStorage.setItem(KEY_STORAGE, input.value.trim());
  input.value = "";
  keyForm.hidden = true;
  forgetKey.hidden = false;
  say("");
  route();
});

forgetKey.addEventListener("click", () => {
  sessionStorage.removeItem(KEY_STORAGE);
  forgetKey.hidden = true;
  route();
});
forgetKey.hidden = !sessionStorage.getItem(KEY_STORAGE);

// ---------------------------------------------------------------------------------------
// Views and polling
// ---------------------------------------------------------------------------------------

let viewTimers = [];
let viewAborts = [];

function leaveView() {
  viewTimers.forEach(clearTimeout);
  viewTimers = [];
  viewAborts.forEach((a) => a.abort());
  viewAborts = [];
}

/** Runs `task` now and every POLL_MS after the previous run ended, while the view stays. */
function poll(task) {
  const timers = viewTimers;
  const run = async () => {
    try { await task(); } catch (err) { if (err.name !== "AbortError") say(err.message, true); }
    if (timers === viewTimers) timers.push(setTimeout(run, POLL_MS));
  };
  run();
}

/** A controller aborted when the view is left. */
function viewAbort() {
  const a = new AbortController();
  viewAborts.push(a);
  return a;
}

const routes = [
  [/^#\/cluster$/, "cluster", viewCluster],
  [/^#\/topics$/, "topics", viewTopics],
  [/^#\/topics\/([^/]+)$/, "topics", viewTopic],
  [/^#\/topics\/([^/]+)\/(\d+)$/, "topics", viewPartition],
  [/^#\/groups$/, "groups", viewGroups],
  [/^#\/groups\/([^/]+)$/, "groups", viewGroup],
  [/^#\/publish(?:\/([^/]+))?$/, "publish", viewPublish],
];

function route() {
  leaveView();
  say("");
  const hash = location.hash && location.hash !== "#" ? location.hash.split("?")[0] : "#/cluster";
  const found = routes.find(([re]) => re.test(hash)) || routes[0];
  const params = (found[0].exec(hash) || []).slice(1).map((p) => p === undefined ? p : decodeURIComponent(p));
  for (const a of document.querySelectorAll("header nav a")) {
    if (a.dataset.section === found[1]) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  view.replaceChildren();
  found[2](...params);
}

window.addEventListener("hashchange", route);

// ---------------------------------------------------------------------------------------
// Cluster
// ---------------------------------------------------------------------------------------

function viewCluster() {
  document.title = "Cluster · psubd console";
  const cards = h("div", {class: "cards", id: "cluster-cards"});
  const nodes = h("div");
  view.append(h("h1", {}, "Cluster"), cards, h("h2", {}, "Nodes"), nodes,
    h("p", {class: "muted"}, "Alive: the node answered this node's probe just now. Disk figures are this node's own (its /metrics)."));
  poll(async () => {
    const info = await api("GET", "/v1/cluster");
    const own = await metrics().catch(() => []);
    const gauge = (name) => own.find((m) => m.name === name)?.value;
    const led = (id) => info.partitions.filter((p) => p.leader === id).length;
    const held = (id) => info.partitions.filter((p) => p.replicas.includes(id)).length;
    const topics = new Set(info.partitions.map((p) => p.topic).filter((t) => !t.startsWith("__")));
    const alive = info.nodes.filter((n) => n.alive).length;
    cards.replaceChildren(
      h("div", {class: "card"}, "Nodes alive", h("b", {id: "nodes-alive"}, `${alive} / ${info.nodes.length}`)),
      h("div", {class: "card"}, "Controller leader", h("b", {id: "controller-leader"}, info.controller_leader ?? "none")),
      h("div", {class: "card"}, "Topics", h("b", {id: "topic-count"}, topics.size)),
      h("div", {class: "card"}, "Partitions (incl. internal)", h("b", {}, info.partitions.length)),
      h("div", {class: "card"}, `Data directory, node ${info.node_id}`, h("b", {}, bytes(gauge("psubd_data_dir_bytes")))),
      h("div", {class: "card"}, `Free disk, node ${info.node_id}`, h("b", {}, bytes(gauge("psubd_storage_free_bytes")))));
    nodes.replaceChildren(table("nodes",
      ["Node", "HTTP", "Raft", "Alive", {label: "Partitions led", num: true}, {label: "Replicas held", num: true}],
      info.nodes.map((n) => h("tr", {"data-node": n.id},
        h("td", {}, n.id + (n.id === info.node_id ? " (this node)" : "") + (n.id === info.controller_leader ? " · controller leader" : "")),
        h("td", {}, n.http ? h("a", {href: n.http + "/ui"}, n.http) : "–"),
        h("td", {}, n.raft),
        h("td", {class: n.alive ? "alive" : "dead"}, n.alive ? "alive" : "not answering"),
        num(led(n.id), {class: "led"}),
        num(held(n.id))))));
    showNode(info.node_id);
  });
}

function showNode(id) {
  document.getElementById("node-label").textContent = `served by node ${id}`;
}

// ---------------------------------------------------------------------------------------
// Topics
// ---------------------------------------------------------------------------------------

function field(label, input) {
  return h("label", {for: input.id}, label, input);
}

function viewTopics() {
  document.title = "Topics · psubd console";
  const list = h("div");
  const form = h("form", {class: "inline", id: "create-topic-form", "aria-label": "Create a topic"},
    field("Name", h("input", {id: "topic-name", required: true, pattern: "[A-Za-z0-9._\\-]{1,249}", autocomplete: "off"})),
    field("Partitions", h("input", {id: "topic-partitions", type: "number", min: 1, max: 1024, value: 1})),
    field("Replication factor (blank: default)", h("input", {id: "topic-rf", type: "number", min: 1})),
    field("Retention ms (blank: 7 days, -1: none)", h("input", {id: "topic-retention-ms", type: "number", min: -1})),
    field("Cleanup policy", h("select", {id: "topic-policy"}, h("option", {value: "delete"}, "delete"), h("option", {value: "compact"}, "compact"))),
    h("button", {type: "submit", id: "create-topic"}, "Create topic"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const spec = {name: form.querySelector("#topic-name").value.trim(),
      partitions: Number(form.querySelector("#topic-partitions").value || 1),
      cleanup_policy: form.querySelector("#topic-policy").value};
    const rf = form.querySelector("#topic-rf").value;
    const retention = form.querySelector("#topic-retention-ms").value;
    if (rf) spec.replication_factor = Number(rf);
    if (retention) spec.retention_ms = Number(retention);
    try {
      await api("POST", "/v1/topics", spec);
      say(`Topic ${spec.name} created.`);
      location.hash = `#/topics/${enc(spec.name)}`;
    } catch (err) { say(err.message, true); }
  });
  view.append(h("h1", {}, "Topics"), list, h("h2", {}, "Create a topic"), form);
  poll(async () => {
    const topics = await api("GET", "/v1/topics");
    list.replaceChildren(topics.length === 0 ? h("p", {}, "No topics yet.") : table("topics",
      ["Topic", {label: "Partitions", num: true}, {label: "Replication", num: true}, {label: "Retention ms", num: true},
       {label: "Retention bytes", num: true}, "Cleanup", "Actions"],
      topics.map((t) => h("tr", {"data-topic": t.name},
        h("td", {}, h("a", {href: `#/topics/${enc(t.name)}`}, t.name)),
        num(t.partitions), num(t.replication_factor), num(t.retention_ms), num(t.retention_bytes),
        h("td", {}, t.cleanup_policy),
        h("td", {}, h("button", {type: "button", class: "danger", "aria-label": `Delete topic ${t.name}`,
          onclick: () => deleteTopic(t.name)}, "Delete"))))));
  });
}

async function deleteTopic(name) {
  if (!confirm(`Delete topic ${name} and all its records? This cannot be undone.`)) return;
  try {
    await api("DELETE", `/v1/topics/${enc(name)}`);
    say(`Topic ${name} deleted.`);
    if (location.hash === "#/topics") route(); else location.hash = "#/topics";
  } catch (err) { say(err.message, true); }
}

function viewTopic(name) {
  document.title = `${name} · psubd console`;
  const settings = h("div");
  const cards = h("div", {class: "cards"});
  const parts = h("div");
  const alter = h("form", {class: "inline", id: "alter-retention-form", "aria-label": "Alter retention"},
    field("Retention ms (-1: none)", h("input", {id: "alter-retention-ms", type: "number", min: -1})),
    field("Retention bytes per partition (-1: none)", h("input", {id: "alter-retention-bytes", type: "number", min: -1})),
    h("button", {type: "submit", id: "alter-retention"}, "Change retention"));
  alter.addEventListener("submit", async (event) => {
    event.preventDefault();
    const patch = {};
    const ms = alter.querySelector("#alter-retention-ms").value;
    const by = alter.querySelector("#alter-retention-bytes").value;
    if (ms) patch.retention_ms = Number(ms);
    if (by) patch.retention_bytes = Number(by);
    if (!ms && !by) { say("Give a retention to change.", true); return; }
    try {
      const t = await api("PATCH", `/v1/topics/${enc(name)}`, patch);
      say(`Retention of ${name}: ${t.retention_ms} ms, ${t.retention_bytes} bytes.`);
      showSettings(t);
    } catch (err) { say(err.message, true); }
  });
  const showSettings = (t) => settings.replaceChildren(table("topic-settings",
    ["Partitions", "Replication", "Retention ms", "Retention bytes", "Cleanup", "Tombstones kept ms"],
    [h("tr", {}, num(t.partitions), num(t.replication_factor), num(t.retention_ms), num(t.retention_bytes),
      h("td", {}, t.cleanup_policy), num(t.delete_retention_ms))]));
  view.append(h("h1", {}, `Topic ${name}`),
    h("p", {}, h("a", {href: `#/publish/${enc(name)}`}, "Publish to this topic"), " · ",
      h("button", {type: "button", class: "danger", onclick: () => deleteTopic(name)}, "Delete topic")),
    settings, h("h2", {}, "Retention"), alter, cards, h("h2", {}, "Partitions"), parts,
    h("p", {class: "muted"}, "Publish rates are high-watermark increases between polls (every replica). " +
      "The fetch rate counts records fetched through this node only (its /metrics)."));
  api("GET", `/v1/topics/${enc(name)}`).then(showSettings, (err) => say(err.message, true));
  let previous = null;
  let previousFetched = null;
  poll(async () => {
    const rows = await api("GET", `/v1/topics/${enc(name)}/partitions`);
    const now = performance.now();
    const fetched = (await metrics().catch(() => []))
      .find((m) => m.name === "psubd_records_fetched_total" && m.labels.topic === name)?.value ?? 0;
    const seconds = previous ? (now - previous.at) / 1000 : null;
    const publishRate = (p) => {
      const before = previous?.hw.get(p.partition);
      return seconds && before !== undefined && p.high_watermark !== null ? Math.max(0, p.high_watermark - before) / seconds : null;
    };
    const total = rows.reduce((sum, p) => sum + (publishRate(p) ?? 0), 0);
    cards.replaceChildren(
      h("div", {class: "card"}, "Published (all partitions)", h("b", {id: "publish-rate"}, seconds ? rate(total) : "–")),
      h("div", {class: "card"}, "Fetched through this node", h("b", {id: "fetch-rate"},
        seconds && previousFetched !== null ? rate(Math.max(0, fetched - previousFetched) / seconds) : "–")),
      h("div", {class: "card"}, "Stored", h("b", {}, bytes(rows.reduce((s, p) => s + (p.stored_bytes ?? 0), 0)))));
    parts.replaceChildren(table("partitions",
      [{label: "Partition", num: true}, {label: "Leader", num: true}, "Replicas", {label: "Log start", num: true},
       {label: "High watermark", num: true}, {label: "Stored", num: true}, {label: "Publish rate", num: true}],
      rows.map((p) => h("tr", {"data-partition": p.partition},
        h("td", {class: "num"}, h("a", {href: `#/topics/${enc(name)}/${p.partition}`}, `partition ${p.partition}`)),
        num(p.leader ?? "none"), h("td", {}, p.replicas.join(", ")), num(p.log_start_offset),
        num(p.high_watermark, {class: "hw"}), num(bytes(p.stored_bytes)), num(rate(publishRate(p)))))));
    previous = {at: now, hw: new Map(rows.map((p) => [p.partition, p.high_watermark]))};
    previousFetched = fetched;
  });
}

// ---------------------------------------------------------------------------------------
// Records of a partition
// ---------------------------------------------------------------------------------------

function base64ToBytes(b64) {
  const raw = atob(b64);
  const out = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i += 1) out[i] = raw.charCodeAt(i);
  return out;
}

function bytesToBase64(u8) {
  let raw = "";
  for (let i = 0; i < u8.length; i += 1) raw += String.fromCharCode(u8[i]);
  return btoa(raw);
}

/** A record's value as bytes: base64 decoded, strings and JSON as their UTF-8 text. */
function valueBytes(record) {
  if (record.encoding === "base64") return base64ToBytes(record.value);
  const text = typeof record.value === "string" ? record.value : JSON.stringify(record.value);
  return new TextEncoder().encode(text);
}

/** A record's value shown as JSON, text or base64. */
function showValue(record, format) {
  if (record.value === null || record.value === undefined) return "(no value: tombstone)";
  if (format === "base64") return bytesToBase64(valueBytes(record));
  if (format === "text") {
    if (record.encoding === "base64") return new TextDecoder().decode(valueBytes(record));
    return typeof record.value === "string" ? record.value : JSON.stringify(record.value);
  }
  if (record.encoding === "base64") {
    const text = new TextDecoder().decode(valueBytes(record));
    try { return JSON.stringify(JSON.parse(text), null, 2); } catch (_) { return "(not JSON) " + text; }
  }
  return JSON.stringify(record.value, null, 2);
}

function recordRow(record, format) {
  return h("tr", {"data-offset": record.offset},
    num(record.offset), h("td", {}, time(record.timestamp_ms)), h("td", {}, record.key ?? h("span", {class: "muted"}, "none")),
    h("td", {}, h("pre", {class: "value"}, showValue(record, format))));
}

function viewPartition(topic, partition) {
  document.title = `${topic}/${partition} · psubd console`;
  let shown = [];
  // The high watermark of the last read: the tail starts there, so nothing published after
  // the read is missed (the tail of an unread partition starts at its end).
  let readEnd = null;
  const records = h("div", {id: "records-area"});
  const formatSelect = h("select", {id: "value-format"},
    h("option", {value: "json"}, "JSON"), h("option", {value: "text"}, "text"), h("option", {value: "base64"}, "base64"));
  const from = h("select", {id: "from-kind"},
    h("option", {value: "earliest"}, "the log start"), h("option", {value: "offset"}, "an offset"),
    h("option", {value: "time"}, "a time"), h("option", {value: "latest"}, "the end (wait for new)"));
  const offsetInput = h("input", {id: "from-offset", type: "number", min: 0, value: 0});
  const timeInput = h("input", {id: "from-time", type: "datetime-local", step: 1});
  const maxInput = h("input", {id: "max-records", type: "number", min: 1, max: 10000, value: 100});
  const form = h("form", {class: "inline", id: "fetch-form", "aria-label": "Read records"},
    field("Read from", from), field("Offset", offsetInput), field("Time (local)", timeInput),
    field("At most", maxInput), field("Show values as", formatSelect),
    h("button", {type: "submit", id: "fetch-records"}, "Read records"));
  const render = () => records.replaceChildren(shown.length === 0 ? h("p", {}, "No records in that range.") :
    table("records", [{label: "Offset", num: true}, "Time", "Key", "Value"], shown.map((r) => recordRow(r, formatSelect.value))));
  formatSelect.addEventListener("change", () => { render(); renderTail(); });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    let offset = from.value;
    if (offset === "offset") offset = String(Number(offsetInput.value || 0));
    if (offset === "time") {
      const ms = Date.parse(timeInput.value);
      if (Number.isNaN(ms)) { say("Give a time.", true); return; }
      offset = "@" + ms;
    }
    const timeout = offset === "latest" ? 5000 : 0;
    try {
      const answer = await api("GET", `/v1/topics/${enc(topic)}/partitions/${partition}/records?offset=${enc(offset)}` +
        `&max_records=${Number(maxInput.value || 100)}&timeout_ms=${timeout}`, undefined, viewAbort().signal);
      shown = answer.records;
      readEnd = answer.high_watermark;
      render();
      say(`${shown.length} record(s); next offset ${answer.next_offset}, high watermark ${answer.high_watermark}.`);
    } catch (err) { if (err.name !== "AbortError") say(err.message, true); }
  });

  // The live tail: the partition's SSE stream, read with fetch so the API key can be sent.
  let tailed = [];
  let tailAbort = null;
  const tailList = h("ol", {class: "tail", id: "tail", "aria-live": "polite", "aria-label": "Live tail"});
  const tailButton = h("button", {type: "button", id: "tail-toggle", class: "secondary"}, "Start live tail");
  const renderTail = () => tailList.replaceChildren(...tailed.slice().reverse().map((r) =>
    h("li", {"data-offset": r.offset}, `${r.offset}  ${time(r.timestamp_ms)}  ${r.key ?? "–"}  ${showValue(r, formatSelect.value)}`)));
  tailButton.addEventListener("click", () => {
    if (tailAbort) { tailAbort.abort(); return; }
    tailAbort = viewAbort();
    tailButton.textContent = "Stop live tail";
    tailButton.setAttribute("aria-pressed", "true");
    tail(topic, partition, readEnd ?? "latest", tailAbort.signal, (record) => {
      tailed.push(record);
      if (tailed.length > 200) tailed = tailed.slice(-200);
      renderTail();
    }).catch((err) => { if (err.name !== "AbortError") say("Live tail ended: " + err.message, true); })
      .finally(() => {
        tailAbort = null;
        tailButton.textContent = "Start live tail";
        tailButton.setAttribute("aria-pressed", "false");
      });
  });
  view.append(h("h1", {}, h("a", {href: `#/topics/${enc(topic)}`}, topic), ` / partition ${partition}`),
    form, records, h("h2", {}, "Live tail"),
    h("p", {class: "muted"}, "Records from the end of the last read on (newest first), from the partition's stream."),
    tailButton, tailList, h("h2", {}, "Publish to this partition"), publishForm(topic, {topic, partition}));
  form.requestSubmit();
}

/** Reads the partition's Server-Sent Events from `offset` on, calling `onRecord` for each. */
async function tail(topic, partition, offset, signal, onRecord) {
  const resp = await fetch(`/v1/topics/${enc(topic)}/partitions/${partition}/stream?offset=${enc(offset)}`, {
    headers: {...authHeaders(), Accept: "text/event-stream"}, signal});
  if (resp.status === 401) askForKey();
  if (!resp.ok) throw new ApiError(resp.status, null, await resp.text());
  say("Live tail started.");
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length === 0) continue;
      if (event === "record") onRecord(JSON.parse(data.join("\n")));
      else if (event === "error") throw new Error(data.join("\n"));
    }
  }
}

// ---------------------------------------------------------------------------------------
// Consumer groups
// ---------------------------------------------------------------------------------------

function viewGroups() {
  document.title = "Groups · psubd console";
  const list = h("div");
  view.append(h("h1", {}, "Consumer groups"), list);
  poll(async () => {
    const groups = await api("GET", "/v1/groups");
    list.replaceChildren(groups.length === 0 ? h("p", {}, "No consumer groups yet.") : table("groups",
      ["Group", "State", {label: "Members", num: true}],
      groups.map((g) => h("tr", {"data-group": g.group},
        h("td", {}, h("a", {href: `#/groups/${enc(g.group)}`}, g.group)), h("td", {}, g.state), num(g.members)))));
  });
}

function viewGroup(group) {
  document.title = `${group} · psubd console`;
  const about = h("div");
  const members = h("div");
  const offsets = h("div");
  const total = h("b", {id: "group-lag-total"}, "–");
  const chart = h("div", {id: "lag-chart"});
  view.append(h("h1", {}, `Group ${group}`), about, h("h2", {}, "Members"), members,
    h("h2", {}, "Committed offsets and lag"), h("div", {class: "cards"}, h("div", {class: "card"}, "Total lag", total)), offsets,
    h("h2", {}, "Lag over the last minutes"), chart,
    h("p", {class: "muted"}, "Lag is the high watermark minus the committed offset, polled every 2 s while this page is open."));
  const history = [];
  poll(async () => {
    const described = await api("GET", `/v1/groups/${enc(group)}`).catch((err) => (err.status === 404 ? null : Promise.reject(err)));
    if (described) {
      about.replaceChildren(h("p", {}, `State ${described.state}, generation ${described.generation}, ` +
        `strategy ${described.assignment_strategy}, coordinator node ${described.coordinator}.`));
      members.replaceChildren(described.members.length === 0 ? h("p", {}, "No members.") : table("members",
        ["Member", "Topics", "Assigned partitions", {label: "Last seen", num: true}],
        described.members.map((m) => h("tr", {},
          h("td", {}, h("code", {}, m.member_id)), h("td", {}, m.topics.join(", ")),
          h("td", {}, m.assignments.map((a) => `${a.topic}/${a.partition}`).join(", ") || "none"),
          num(`${m.last_seen_ms_ago} ms ago`)))));
    } else {
      about.replaceChildren(h("p", {}, "No members and no committed offsets."));
      members.replaceChildren();
    }
    const answer = await api("GET", `/v1/groups/${enc(group)}/offsets`).catch((err) => (err.status === 404 ? {offsets: []} : Promise.reject(err)));
    const rows = answer.offsets;
    const sum = rows.reduce((s, r) => s + (r.lag ?? 0), 0);
    total.textContent = rows.length ? String(sum) : "–";
    offsets.replaceChildren(rows.length === 0 ? h("p", {}, "No committed offsets.") : table("offsets",
      ["Topic", {label: "Partition", num: true}, {label: "Committed", num: true}, {label: "Log start", num: true},
       {label: "High watermark", num: true}, {label: "Lag", num: true}, "Committed at"],
      rows.map((r) => h("tr", {},
        h("td", {}, h("a", {href: `#/topics/${enc(r.topic)}`}, r.topic)),
        h("td", {class: "num"}, h("a", {href: `#/topics/${enc(r.topic)}/${r.partition}`}, r.partition)),
        num(r.offset), num(r.log_start_offset), num(r.high_watermark),
        num(r.lag, {class: "lag", "data-topic": r.topic, "data-partition": r.partition}),
        h("td", {}, time(r.commit_timestamp_ms))))));
    const now = Date.now();
    history.push({at: now, total: sum, parts: new Map(rows.map((r) => [`${r.topic}/${r.partition}`, r.lag ?? 0]))});
    while (history.length && history[0].at < now - LAG_WINDOW_MS) history.shift();
    chart.replaceChildren(lagChart(history, now));
  });
}

/** An SVG line chart of the total lag and up to five partitions' lag over the window. */
function lagChart(history, now) {
  const width = 640, height = 200, left = 48, bottom = 22, top = 10, right = 10;
  const ns = "http://www.w3.org/2000/svg";
  const s = (tag, attrs = {}, text) => {
    const e = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const keys = [...new Set(history.flatMap((p) => [...p.parts.keys()]))].slice(0, 5);
  const series = [["total", (p) => p.total], ...keys.map((k) => [k, (p) => p.parts.get(k) ?? 0])];
  const max = Math.max(1, ...history.map((p) => p.total));
  const x = (at) => left + (width - left - right) * (1 - (now - at) / LAG_WINDOW_MS);
  const y = (v) => top + (height - top - bottom) * (1 - v / max);
  const svg = s("svg", {class: "chart", width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": `Total lag over the last ${LAG_WINDOW_MS / 60000} minutes: now ${history.at(-1)?.total ?? 0}, at most ${max}`});
  svg.append(s("line", {x1: left, y1: y(0), x2: width - right, y2: y(0), stroke: "#9aa5b1"}),
    s("line", {x1: left, y1: top, x2: left, y2: y(0), stroke: "#9aa5b1"}),
    s("text", {x: left - 6, y: top + 10, "text-anchor": "end"}, max),
    s("text", {x: left - 6, y: y(0), "text-anchor": "end"}, 0),
    s("text", {x: left, y: height - 6}, `${LAG_WINDOW_MS / 60000} min ago`),
    s("text", {x: width - right, y: height - 6, "text-anchor": "end"}, "now"));
  series.forEach(([, value], i) => {
    const points = history.map((p) => `${x(p.at).toFixed(1)},${y(value(p)).toFixed(1)}`).join(" ");
    svg.append(s("polyline", {points, fill: "none", stroke: CHART_COLORS[i % CHART_COLORS.length], "stroke-width": i === 0 ? 2.5 : 1.5}));
  });
  const legend = h("div", {class: "legend"}, series.map(([name], i) =>
    h("span", {}, h("i", {style: `background:${CHART_COLORS[i % CHART_COLORS.length]}`}), name)));
  return h("div", {}, svg, legend);
}

// ---------------------------------------------------------------------------------------
// Publishing
// ---------------------------------------------------------------------------------------

/**
 * A form publishing one record. With `fixed` = {topic, partition} it publishes there (the
 * partition view's form); otherwise it offers the topics, `topic` selected.
 */
function publishForm(topic, fixed) {
  const topicSelect = h("select", {id: "publish-topic", required: true});
  const result = h("p", {id: "publish-result", "aria-live": "polite"});
  const partitionInput = h("input", {id: "publish-partition", type: "number", min: 0});
  const form = h("form", {class: "inline", id: "publish-form", "aria-label": "Publish a record"},
    fixed ? null : field("Topic", topicSelect),
    fixed ? null : field("Partition (blank: by key)", partitionInput),
    field("Key (optional)", h("input", {id: "publish-key", autocomplete: "off"})),
    field("Value", h("textarea", {id: "publish-value", required: true}, '{"hello": "world"}')),
    field("Value is", h("select", {id: "publish-encoding"},
      h("option", {value: "json"}, "JSON"), h("option", {value: "string"}, "text"), h("option", {value: "base64"}, "base64 bytes"))),
    h("button", {type: "submit", id: "publish-submit"}, "Publish"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const name = fixed ? fixed.topic : topicSelect.value;
    const encoding = form.querySelector("#publish-encoding").value;
    const raw = form.querySelector("#publish-value").value;
    const record = {};
    if (encoding === "json") {
      try { record.value = JSON.parse(raw); } catch (err) { say("The value is not valid JSON: " + err.message, true); return; }
    } else record.value = raw;
    const key = form.querySelector("#publish-key").value;
    const partition = fixed ? String(fixed.partition) : partitionInput.value;
    if (key) record.key = key;
    if (partition !== "") record.partition = Number(partition);
    try {
      const answer = await api("POST", `/v1/topics/${enc(name)}/records`, {records: [record], encoding});
      const at = answer.offsets[0];
      result.replaceChildren(h("span", {}, `Published to ${name} partition ${at.partition} at offset ${at.offset}. `,
        fixed ? null : h("a", {href: `#/topics/${enc(name)}/${at.partition}`, id: "publish-view-partition"}, "See the partition")));
      say("Published.");
    } catch (err) { say(err.message, true); }
  });
  if (!fixed) {
    api("GET", "/v1/topics").then((topics) => {
      topicSelect.replaceChildren(...topics.map((t) => h("option", {value: t.name, selected: t.name === topic}, t.name)));
      if (topics.length === 0) say("Create a topic first.", true);
    }, (err) => say(err.message, true));
  }
  return h("div", {}, form, result);
}

function viewPublish(topic) {
  document.title = "Publish · psubd console";
  view.append(h("h1", {}, "Publish a record"), publishForm(topic));
}

route();
// Which node serves this page, for the header (the cluster view refreshes it).
api("GET", "/v1/cluster").then((info) => showNode(info.node_id), () => {});
