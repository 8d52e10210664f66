// pplug playground: the page (users, history, generate, metrics) over the /v1 API.
// Every text from the server or the user is written with textContent, never parsed as HTML.
import {$, ApiError, KEY, api, clearNotice, describe, enc, guarded, notify, parseItems} from "/playground/api.js";

const PAGE = 50; // history items per page
const CHUNK = 100; // items per write request when adding pasted items
const state = {tasks: [], users: [], pending: new Set(), user: null, offset: 0, total: 0};

// ---- key and connection -----------------------------------------------------------------------
function setConnected(text, ok) {
  $("conn").textContent = text;
  $("conn").className = "conn " + (ok ? "ok" : "bad");
}

async function connect() {
  const typed = $("key").value.trim();
  if (typed) sessionStorage.setItem(KEY, typed);
  $("key").value = "";
  if (!sessionStorage.getItem(KEY)) {
    setConnected("not connected", false);
    notify("Paste your API key first.");
    return;
  }
  try {
    state.tasks = await api("GET", "/v1/tasks");
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) sessionStorage.removeItem(KEY);
    setConnected("not connected", false);
    notify(describe(err));
    return;
  }
  clearNotice();
  setConnected(`connected: ${state.tasks.length} task(s)`, true);
  fillTasks();
  await loadUsers();
  await loadMetrics();
}

function forget() {
  sessionStorage.removeItem(KEY);
  state.tasks = [];
  state.users = [];
  state.user = null;
  setConnected("not connected", false);
  fillTasks();
  renderUsers();
  renderHistory([], 0);
  notify("The key is forgotten in this tab.", "info");
}

// ---- users ------------------------------------------------------------------------------------
async function loadUsers() {
  const data = await guarded(() => api("GET", "/v1/users?limit=1000"));
  if (!data) return;
  state.users = data.users;
  for (const u of data.users) state.pending.delete(u.user_id);
  renderUsers();
  if (state.user) await loadHistory();
}

function allUsers() {
  const known = state.users.map((u) => ({id: u.user_id, size: u.history_size, pending: false}));
  for (const id of state.pending) known.push({id, size: 0, pending: true});
  return known;
}

function renderUsers() {
  const list = $("user-list");
  list.replaceChildren();
  const users = allUsers();
  $("users-empty").hidden = users.length > 0;
  for (const u of users) {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.className = "user";
    b.dataset.user = u.id;
    b.setAttribute("aria-pressed", String(u.id === state.user));
    b.textContent = u.id;
    const n = document.createElement("span");
    n.className = "muted";
    n.textContent = u.pending ? " (new: add an item to save)" : ` (${u.size} item${u.size === 1 ? "" : "s"})`;
    b.append(n);
    b.addEventListener("click", () => selectUser(u.id));
    li.append(b);
    list.append(li);
  }
  const other = $("other");
  const previous = other.value;
  other.replaceChildren();
  other.append(new Option("(nobody: skip this column)", ""));
  for (const u of users) {
    if (u.id !== state.user && !u.pending) other.append(new Option(u.id, u.id));
  }
  const keep = [...other.options].some((o) => o.value === previous && previous);
  other.value = keep ? previous : (other.options.length > 1 ? other.options[1].value : "");
  $("history-user").textContent = state.user ? state.user : "(pick a user)";
  $("gen-user").textContent = state.user ? state.user : "(pick a user)";
}

async function selectUser(id) {
  state.user = id;
  state.offset = 0;
  renderUsers();
  await loadHistory();
}

function addUser(event) {
  event.preventDefault();
  const input = $("new-user");
  const id = input.value.trim();
  if (!/^[^\s/]+$/.test(id)) {
    notify("A user id needs at least one character and no spaces or '/'.");
    return;
  }
  if (!allUsers().some((u) => u.id === id)) state.pending.add(id);
  input.value = "";
  notify(`User '${id}' is saved on the server when you add her first history item.`, "info");
  selectUser(id);
}

// ---- history ----------------------------------------------------------------------------------
async function loadHistory() {
  if (!state.user) return;
  if (state.pending.has(state.user)) {
    renderHistory([], 0);
    return;
  }
  const path = `/v1/users/${enc(state.user)}/items?limit=${PAGE}&offset=${state.offset}`;
  const data = await guarded(() => api("GET", path));
  if (!data) return;
  renderHistory(data.items, data.total);
}

function fieldsText(fields) {
  return Object.entries(fields).map(([k, v]) => `${k}: ${v}`).join("\n");
}

function renderHistory(items, total) {
  state.total = total;
  const body = $("items").tBodies[0];
  body.replaceChildren();
  for (const it of items) {
    const tr = body.insertRow();
    tr.dataset.item = it.id;
    tr.insertCell().textContent = it.id;
    const f = tr.insertCell();
    f.className = "fields";
    f.textContent = fieldsText(it.fields);
    tr.insertCell().textContent = it.date || "";
    const b = document.createElement("button");
    b.type = "button";
    b.className = "danger small";
    b.textContent = "Delete";
    b.setAttribute("aria-label", `Delete item ${it.id}`);
    b.addEventListener("click", () => deleteItem(it.id));
    tr.insertCell().append(b);
  }
  const shown = items.length ? `${state.offset + 1}-${state.offset + items.length} of ${total}` : `0 of ${total}`;
  $("history-count").textContent = state.user ? `Items ${shown} (oldest first).` : "";
  $("prev-page").disabled = state.offset === 0;
  $("next-page").disabled = state.offset + items.length >= total;
  for (const id of ["delete-all", "delete-user"]) $(id).disabled = !state.user || state.pending.has(state.user);
}

async function page(step) {
  state.offset = Math.max(0, state.offset + step * PAGE);
  await loadHistory();
}

async function deleteItem(id) {
  const data = await guarded(() => api("DELETE", `/v1/users/${enc(state.user)}/items/${enc(id)}`));
  if (!data) return;
  notify(`Deleted item '${id}'.`, "info");
  if (state.offset >= state.total - 1) state.offset = Math.max(0, state.offset - PAGE);
  await loadUsers();
}

async function deleteAll(withUser) {
  const user = state.user;
  const what = withUser ? `user '${user}' and all her items` : `all items of '${user}'`;
  if (!window.confirm(`Delete ${what}?`)) return;
  const path = withUser ? `/v1/users/${enc(user)}` : `/v1/users/${enc(user)}/items`;
  const data = await guarded(() => api("DELETE", path));
  if (!data) return;
  notify(`Deleted ${what} (${data.deleted_items} item(s)).`, "info");
  state.offset = 0;
  if (withUser) {
    state.user = null;
    renderHistory([], 0);
  }
  await loadUsers();
}

async function writeItems(items) {
  if (!state.user) throw new ApiError(0, "Pick or add a user first.");
  let size = 0;
  for (let i = 0; i < items.length; i += CHUNK) {
    const part = items.slice(i, i + CHUNK);
    try {
      size = (await api("POST", `/v1/users/${enc(state.user)}/items`, {items: part})).history_size;
    } catch (err) {
      const done = i ? ` (items 1-${i} were added)` : "";
      throw new ApiError(err.status || 0, `${err.message}${done}`);
    }
  }
  state.pending.delete(state.user);
  notify(`Added ${items.length} item(s) to '${state.user}': ${size} in her history.`, "info");
  state.offset = Math.max(0, Math.floor((size - 1) / PAGE) * PAGE); // show the page with the new items
  await loadUsers();
}

function currentTask() {
  return state.tasks.find((t) => t.name === $("task").value);
}

function renderItemFields() {
  const task = currentTask();
  $("item-task").textContent = task ? task.name : "(connect to see them)";
  const box = $("item-fields");
  box.replaceChildren();
  for (const name of task ? task.item_fields : []) {
    const label = document.createElement("label");
    label.textContent = name + " ";
    const area = document.createElement("textarea");
    area.rows = 2;
    area.dataset.field = name;
    area.required = true;
    label.append(area);
    box.append(label);
  }
}

async function addItem(event) {
  event.preventDefault();
  const fields = {};
  for (const area of $("item-fields").querySelectorAll("textarea")) fields[area.dataset.field] = area.value;
  if (!Object.keys(fields).length) {
    notify("Connect first: the item fields come from the served task.");
    return;
  }
  const item = {fields};
  if ($("item-id").value.trim()) item.id = $("item-id").value.trim();
  if ($("item-date").value.trim()) item.date = $("item-date").value.trim();
  await guarded(async () => {
    await writeItems([item]);
    for (const area of $("item-fields").querySelectorAll("textarea")) area.value = "";
    $("item-id").value = "";
  });
}

async function addBulk(event) {
  event.preventDefault();
  await guarded(async () => {
    await writeItems(parseItems($("bulk").value));
    $("bulk").value = "";
    $("bulk-file").value = "";
  });
}

async function loadFile() {
  const file = $("bulk-file").files[0];
  if (!file) return;
  await guarded(async () => {
    $("bulk").value = await file.text();
    notify(`Loaded ${file.name}: press "Add pasted items" to write them.`, "info");
  });
}

// ---- generate ---------------------------------------------------------------------------------
function fillTasks() {
  const select = $("task");
  const previous = select.value;
  select.replaceChildren();
  for (const t of state.tasks) select.append(new Option(`${t.name} (${t.kind})`, t.name));
  if (state.tasks.some((t) => t.name === previous)) select.value = previous;
  renderItemFields();
}

function text(tag, content, cls) {
  const el = document.createElement(tag);
  el.textContent = content;
  if (cls) el.className = cls;
  return el;
}

function renderBars(explanation) {
  const list = document.createElement("ol");
  list.className = "bars";
  list.setAttribute("aria-label", "History items that shaped this output, by aggregator weight");
  for (const e of explanation) {
    const li = document.createElement("li");
    li.className = "bar-row";
    const pct = (e.weight * 100).toFixed(1) + "%";
    const head = text("div", "", "bar-head");
    head.append(text("span", e.item_id, "bar-id"), text("span", pct, "bar-pct"));
    const track = text("div", "", "bar-track");
    track.setAttribute("role", "img");
    track.setAttribute("aria-label", `weight ${pct}`);
    const fill = text("div", "", "bar");
    fill.style.width = Math.max(0.5, Math.min(100, e.weight * 100)) + "%";
    track.append(fill);
    li.append(head, track, text("p", e.text, "bar-text"));
    list.append(li);
  }
  return list;
}

function renderCard(id, title, result) {
  const card = $(id);
  const body = document.createElement("div");
  body.className = "body";
  if (result.skipped) {
    body.append(text("p", result.skipped, "muted"));
  } else if (result.error) {
    body.append(text("p", describe(result.error), "error-text"));
  } else {
    const r = result.data;
    body.append(text("p", r.output || "(empty output)", "output"));
    if (r.raw && r.raw.trim() !== r.output) body.append(text("p", `raw: ${r.raw}`, "raw muted"));
    body.append(text("p", `server ${r.latency_ms.toFixed(1)} ms · round trip ${result.ms.toFixed(0)} ms · ` +
                          `batch of ${r.batch_size} · ${r.history_size} history item(s) · ` +
                          `${r.prompt_tokens} prompt tokens`, "latency muted"));
    if (r.explanation.length) {
      body.append(text("h4", "Which past items shaped it (aggregator weight)"), renderBars(r.explanation));
    } else if (r.persona !== "none") {
      body.append(text("p", "No explanation: the plug read no history items.", "muted"));
    }
  }
  card.replaceChildren(text("h3", title), body);
  card.querySelector("h3").id = id + "-h";
}

async function timed(body) {
  const t0 = performance.now();
  try {
    const data = await api("POST", "/v1/generate", body);
    return {data, ms: performance.now() - t0};
  } catch (error) {
    return {error};
  }
}

async function generate(event) {
  if (event) event.preventDefault();
  if (!state.user) {
    notify("Pick a user first (or add one under Users).");
    return;
  }
  const input = $("input").value;
  if (!input.trim()) {
    notify("Type an input to generate from.");
    $("input").focus();
    return;
  }
  const base = {user_id: state.user, task: $("task").value, input};
  const maxNew = $("max-new").value.trim();
  if (maxNew) base.max_new_tokens = Number(maxNew);
  const other = $("other").value;
  const button = $("gen-button");
  button.disabled = true;
  button.textContent = "Generating...";
  $("results").setAttribute("aria-busy", "true");
  try {
    const [own, none, theirs] = await Promise.all([
      timed({...base, persona: "own"}),
      timed({...base, persona: "none"}),
      other ? timed({...base, persona: "user:" + other}) : Promise.resolve({skipped: "Pick another user to compare."}),
    ]);
    renderCard("out-own", `Own persona: ${state.user}`, own);
    renderCard("out-none", "No persona (same input, no history)", none);
    renderCard("out-other", other ? `Persona of ${other}` : "Other user's persona", theirs);
    const failed = [own, none, theirs].find((r) => r.error);
    if (failed) notify(describe(failed.error));
    else clearNotice();
  } finally {
    button.disabled = false;
    button.textContent = "Generate";
    $("results").setAttribute("aria-busy", "false");
  }
  await loadMetrics();
}

// ---- metrics ----------------------------------------------------------------------------------
// Metrics failures show in their own panel: they refresh after every generate and must not hide other messages.
async function loadMetrics() {
  let data;
  try {
    data = await api("GET", "/metrics?format=json");
  } catch (err) {
    $("metrics-error").textContent = `Metrics unavailable: ${describe(err)}`;
    $("metrics-error").hidden = false;
    return;
  }
  $("metrics-error").hidden = true;
  const requests = data.requests || [];
  const summary = $("metrics-summary");
  summary.replaceChildren();
  const facts = [["requests", requests.reduce((n, r) => n + r.count, 0)],
                 ["errors (4xx/5xx)", requests.filter((r) => r.status >= 400).reduce((n, r) => n + r.count, 0)],
                 ["backbone calls", data.batches], ["mean batch size", data.mean_batch_size]];
  for (const [k, v] of facts) {
    if (v === undefined) continue;
    const pair = document.createElement("div");
    pair.append(text("dt", k), text("dd", String(v)));
    summary.append(pair);
  }
  const body = $("metrics-table").tBodies[0];
  body.replaceChildren();
  for (const r of requests) {
    const tr = body.insertRow();
    for (const v of [r.method, r.route, r.status, r.count]) tr.insertCell().textContent = String(v);
  }
}

// ---- wiring -----------------------------------------------------------------------------------
function init() {
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    connect();
  });
  $("forget").addEventListener("click", forget);
  $("new-user-form").addEventListener("submit", addUser);
  $("refresh-users").addEventListener("click", loadUsers);
  $("prev-page").addEventListener("click", () => page(-1));
  $("next-page").addEventListener("click", () => page(1));
  $("delete-all").addEventListener("click", () => deleteAll(false));
  $("delete-user").addEventListener("click", () => deleteAll(true));
  $("item-form").addEventListener("submit", addItem);
  $("bulk-form").addEventListener("submit", addBulk);
  $("bulk-file").addEventListener("change", loadFile);
  $("task").addEventListener("change", renderItemFields);
  $("gen-form").addEventListener("submit", generate);
  $("input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) generate(e);
  });
  $("refresh-metrics").addEventListener("click", loadMetrics);
  renderHistory([], 0);
  renderUsers();
  window.addEventListener("unhandledrejection", (e) => notify(describe(e.reason)));
  if (sessionStorage.getItem(KEY)) connect();
}

document.addEventListener("DOMContentLoaded", init);
