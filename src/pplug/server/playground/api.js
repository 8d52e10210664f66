// pplug playground: the API client and the page's messages. Plain JavaScript modules, no dependencies.
// The API key lives in sessionStorage only and travels only in the Authorization header.

export const KEY = "pplug.apiKey";
export const $ = (id) => document.getElementById(id);

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// ---- messages ---------------------------------------------------------------------------------
export function notify(message, kind = "error") {
  const box = $("notice");
  box.textContent = message;
  box.className = "notice " + kind;
  box.setAttribute("role", kind === "error" ? "alert" : "status");
  box.hidden = false;
}

export function clearNotice() {
  $("notice").hidden = true;
  $("notice").textContent = "";
}

export function describe(err) {
  if (err instanceof ApiError) {
    return err.status ? `Error ${err.status}: ${err.message}` : err.message;
  }
  return `Error: ${err && err.message ? err.message : String(err)}`;
}

// Run an async UI action; any failure becomes a readable message on the page.
export async function guarded(action) {
  try {
    return await action();
  } catch (err) {
    notify(describe(err));
    return undefined;
  }
}

// ---- the API ----------------------------------------------------------------------------------
export async function api(method, path, body) {
  const key = sessionStorage.getItem(KEY);
  if (!key) throw new ApiError(0, "Paste your API key above and press Connect first.");
  const headers = {Authorization: "Bearer " + key, Accept: "application/json"};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {method, headers, body: body === undefined ? undefined : JSON.stringify(body),
                                  cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer"});
  } catch (err) {
    throw new ApiError(0, `Cannot reach the server (${err.message}). Is pplug serve still running?`);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch (_) {
    data = null;
  }
  if (!response.ok) {
    const e = data && data.error;
    let message = e && e.message ? e.message : (text.slice(0, 300) || response.statusText || "request failed");
    if (e && e.param && !message.includes(e.param)) message += ` (field: ${e.param})`;
    if (response.status === 401) {
      message = `The server rejected the API key: ${message}. Paste a valid tenant key ` +
                "(made by pplug serve --create-tenant NAME).";
    }
    if (response.status === 429 || response.status === 503) {
      const retry = response.headers.get("Retry-After");
      if (retry) message += ` Retry in ${retry} s.`;
    }
    throw new ApiError(response.status, message);
  }
  return data;
}

export const enc = encodeURIComponent;

// Items from pasted text: a JSON list, {"items": [...]}, a LaMP question ({"profile": [...]}), one object, or JSONL.
export function parseItems(text) {
  text = text.trim();
  if (!text) throw new ApiError(0, "Nothing to add: paste JSON or JSONL items, or load a file.");
  let data;
  try {
    data = JSON.parse(text);
  } catch (_) {
    data = text.split(/\r?\n/).filter((line) => line.trim()).map((line, i) => {
      try {
        return JSON.parse(line);
      } catch (err) {
        throw new ApiError(0, `Line ${i + 1} is not valid JSON (${err.message}).`);
      }
    });
  }
  if (!Array.isArray(data)) {
    if (data && Array.isArray(data.items)) data = data.items;
    else if (data && Array.isArray(data.profile)) data = data.profile;
    else data = [data];
  }
  if (!data.length) throw new ApiError(0, "The pasted list is empty.");
  return data.map((d, i) => {
    if (!d || typeof d !== "object" || Array.isArray(d)) throw new ApiError(0, `Item ${i + 1} is not a JSON object.`);
    if (d.fields && typeof d.fields === "object") {
      const item = {fields: d.fields};
      if (d.id != null) item.id = String(d.id);
      if (d.date != null) item.date = String(d.date);
      return item;
    }
    const {id, date, ...fields} = d;
    const item = {fields};
    if (id != null) item.id = String(id);
    if (date != null) item.date = String(date);
    return item;
  });
}
