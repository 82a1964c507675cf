// Thin client for the vc-control JSON API. The JWT lives in localStorage so a reload keeps
// the user logged in; every error body is `{"error": {"code", "message"}}` (issue 3).

const TOKEN_KEY = 'vc.token';
const EMAIL_KEY = 'vc.email';
const EXPIRES_KEY = 'vc.expires_at';

export class ApiError extends Error {
  constructor(status, code, message, retryAfter) {
    super(message || code || `HTTP ${status}`);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

export const session = {
  get token() {
    const t = localStorage.getItem(TOKEN_KEY);
    const exp = Number(localStorage.getItem(EXPIRES_KEY) || 0);
    if (!t || (exp && Date.now() > exp)) return null;
    return t;
  },
  get email() { return localStorage.getItem(EMAIL_KEY) || ''; },
  save(token, email, expiresIn) {
    localStorage.setItem(TOKEN_KEY, token);
    localStorage.setItem(EMAIL_KEY, email);
    // Renew a minute early so a request never goes out with a token about to expire.
    const ms = Math.max(0, (Number(expiresIn) || 86400) - 60) * 1000;
    localStorage.setItem(EXPIRES_KEY, String(Date.now() + ms));
  },
  clear() {
    localStorage.removeItem(TOKEN_KEY);
    localStorage.removeItem(EMAIL_KEY);
    localStorage.removeItem(EXPIRES_KEY);
  },
};

/** Called when the server says the JWT is no longer good (set by the app shell). */
export let onUnauthorized = () => {};
export function setUnauthorizedHandler(fn) { onUnauthorized = fn; }

/**
 * `api('GET', '/api/camera/devices')`; `body` is sent as JSON; `signal` aborts (long polls).
 * Resolves to the parsed JSON (or null for 204), rejects with ApiError.
 */
export async function api(method, path, body, { signal, auth = true, onHeaders } = {}) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const token = session.token;
  if (auth && token) headers.Authorization = `Bearer ${token}`;
  let res;
  try {
    res = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
    });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, 'network', 'Cannot reach the server. Check your connection.');
  }
  if (res.ok && onHeaders) onHeaders(res.headers);
  if (res.status === 204) return null;
  const text = await res.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = null; }
  }
  if (!res.ok) {
    const err = data && data.error ? data.error : {};
    const retry = Number(res.headers.get('Retry-After')) || undefined;
    const e = new ApiError(res.status, err.code || `http_${res.status}`, err.message || res.statusText, retry);
    if (res.status === 401 && auth && token) onUnauthorized(e);
    throw e;
  }
  return data;
}

export const API = {
  register: (email, password) => api('POST', '/api/register', { email, password }, { auth: false }),
  login: (email, password) => api('POST', '/api/login', { email, password }, { auth: false }),
  models: () => api('GET', '/api/camera/models', undefined, { auth: false }),
  onboard: (req) => api('POST', '/api/camera/onboard', req),
  checkStatus: (deviceToken, waitSecs, signal) =>
    api('GET', `/api/camera/check-status/${encodeURIComponent(deviceToken)}?wait=${waitSecs}`, undefined, { signal }),
  devices: allDevices,
  device: (id) => api('GET', `/api/camera/devices/${encodeURIComponent(id)}`),
  deleteDevice: (id) => api('DELETE', `/api/camera/devices/${encodeURIComponent(id)}`),
  shares: (id) => api('GET', `/api/camera/devices/${encodeURIComponent(id)}/shares`),
  share: (id, email) => api('POST', `/api/camera/devices/${encodeURIComponent(id)}/shares`, { email, role: 'viewer' }),
  revokeShare: (id, shareId) =>
    api('DELETE', `/api/camera/devices/${encodeURIComponent(id)}/shares/${encodeURIComponent(shareId)}`),
  ticket: (deviceId) => api('POST', '/api/relay/ticket', { device_id: deviceId }),
};

/**
 * Every device of the account, own and shared: the list comes in pages (`x-next-cursor`
 * names where the next one starts). Bounded, so a server bug cannot loop the tab forever.
 */
async function allDevices() {
  const all = [];
  let query = '?limit=500';
  for (let page = 0; page < 100; page++) {
    let next = null;
    const data = await api('GET', `/api/camera/devices${query}`, undefined, {
      onHeaders: (headers) => { next = headers.get('x-next-cursor'); },
    });
    if (Array.isArray(data)) all.push(...data);
    if (!next) break;
    query = `?limit=500&after=${encodeURIComponent(next)}`;
  }
  return all;
}

/** The models endpoint's shape is `[{...}]` or `{models: [...]}`; entries name their code differently. */
export function modelList(data) {
  if (Array.isArray(data)) return data;
  if (data && Array.isArray(data.models)) return data.models;
  return [];
}
export function modelCode(m) {
  return m.code ?? m.model ?? m.camera_model ?? m.id ?? m.name;
}
export function modelName(m) {
  return m.display_name ?? m.name ?? modelCode(m);
}
