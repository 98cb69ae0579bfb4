// api.js - the dashboard's calls to the JSON API on its own origin: the
// token (kept in sessionStorage only: gone when the tab closes) on every
// call, and one place that notices a 401 and asks for the token.

const KEY = 'taskbus.token';
let onUnauthorized = () => {};

export function token() {
  return sessionStorage.getItem(KEY) || '';
}

export function setToken(t) {
  if (t) sessionStorage.setItem(KEY, t);
  else sessionStorage.removeItem(KEY);
}

export function whenUnauthorized(fn) {
  onUnauthorized = fn;
}

export class ApiError extends Error {
  constructor(status, body) {
    super(body && body.message ? `${status} ${body.error}: ${body.message}`
      : `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

// call('GET', '/tasks', {state: 'running'}) -> the parsed JSON answer;
// throws ApiError for a status >= 400 (after onUnauthorized for a 401).
export async function call(method, path, query, body) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(query || {}))
    if (v !== undefined && v !== null && v !== '') url.searchParams.set(k, v);
  const headers = {Accept: 'application/json'};
  const t = token();
  if (t) headers.Authorization = `Bearer ${t}`;
  const init = {method, headers, cache: 'no-store'};
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const r = await fetch(url, init);
  const text = await r.text();
  let o = null;
  try {
    o = text ? JSON.parse(text) : null;
  } catch {
    o = {error: 'bad_answer', message: text.slice(0, 200)};
  }
  if (r.status === 401) onUnauthorized();
  if (r.status >= 400) throw new ApiError(r.status, o);
  return o;
}
