// VisionConnect viewer: a hash-routed single page app (no build step, no dependencies).
// Routes: #/login, #/register, #/cameras, #/add, #/models, #/player/<device id>[?relay=1|0].

import { API, ApiError, session, setUnauthorizedHandler, modelList, modelCode, modelName } from './api.js';
import { Player, STATES } from './player.js';

const app = document.getElementById('app');
const nav = document.getElementById('nav');
const whoami = document.getElementById('whoami');

/** Builds an element: h('a', {href: '#'}, 'text', child). Strings are text nodes (never HTML). */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function alertBox(kind, text, id) {
  return h('div', { class: `alert ${kind}`, role: kind === 'error' ? 'alert' : 'status', id }, text);
}

function errorText(e) {
  if (e instanceof ApiError) {
    if (e.status === 429) return `Too many attempts. Try again in ${e.retryAfter || 60} s.`;
    return e.message;
  }
  return e && e.message ? e.message : String(e);
}

/** Timestamps arrive as RFC 3339 strings or unix seconds/milliseconds. */
function toDate(v) {
  if (v === null || v === undefined || v === '') return null;
  if (typeof v === 'number') return new Date(v < 1e12 ? v * 1000 : v);
  const d = new Date(v);
  return Number.isNaN(d.getTime()) ? null : d;
}

function ago(v) {
  const d = toDate(v);
  if (!d) return '—';
  const s = Math.round((Date.now() - d.getTime()) / 1000);
  if (s < 5) return 'just now';
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return d.toLocaleString();
}

function statusPill(status, id) {
  const st = status || 'unknown';
  return h('span', { class: `status ${st}`, id, dataset: { status: st } }, st);
}

let modelsCache = null;
async function models() {
  if (!modelsCache) modelsCache = modelList(await API.models());
  return modelsCache;
}
function modelLabel(code) {
  const m = (modelsCache || []).find((x) => modelCode(x) === code);
  return m ? modelName(m) : code;
}

function capabilityChips(caps) {
  if (!caps) return [];
  if (typeof caps === 'string') {
    try { caps = JSON.parse(caps); } catch { return [h('span', { class: 'cap' }, caps)]; }
  }
  if (Array.isArray(caps)) return caps.map((c) => h('span', { class: 'cap' }, String(c)));
  return Object.entries(caps)
    .filter(([, v]) => v !== false && v !== null)
    .map(([k, v]) => h('span', { class: 'cap' }, v === true ? k : `${k}: ${Array.isArray(v) ? v.join(', ') : v}`));
}

// ---- views: each renders into `app` and returns a cleanup function ---------------------------

function authForm({ title, submitLabel, withConfirm, onSubmit, footer }) {
  const msg = h('div');
  const email = h('input', { type: 'email', id: 'email', name: 'email', autocomplete: 'email', required: true });
  const password = h('input', {
    type: 'password', id: 'password', name: 'password', required: true, minlength: withConfirm ? 8 : undefined,
    autocomplete: withConfirm ? 'new-password' : 'current-password',
  });
  const confirm = withConfirm
    ? h('input', { type: 'password', id: 'password2', name: 'password2', autocomplete: 'new-password', required: true })
    : null;
  const button = h('button', { type: 'submit', class: 'full', id: 'submit' }, submitLabel);
  const form = h('form', { class: 'panel narrow stack', novalidate: false },
    h('h1', {}, title),
    msg,
    h('div', {}, h('label', { for: 'email' }, 'Email'), email),
    h('div', {}, h('label', { for: 'password' }, 'Password'), password,
      withConfirm ? h('div', { class: 'hint' }, 'At least 8 characters.') : null),
    confirm ? h('div', {}, h('label', { for: 'password2' }, 'Repeat password'), confirm) : null,
    button,
    h('p', { class: 'muted small' }, footer));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    msg.replaceChildren();
    if (confirm && confirm.value !== password.value) {
      msg.append(alertBox('error', 'The passwords do not match.'));
      return;
    }
    button.disabled = true;
    try {
      await onSubmit(email.value.trim(), password.value, msg);
    } catch (e) {
      msg.replaceChildren(alertBox('error', errorText(e), 'form-error'));
    } finally {
      button.disabled = false;
    }
  });
  app.replaceChildren(form);
  email.focus();
  return () => {};
}

async function logIn(email, password) {
  const t = await API.login(email, password);
  session.save(t.access_token, email, t.expires_in);
  go('#/cameras');
}

function viewLogin() {
  return authForm({
    title: 'Log in',
    submitLabel: 'Log in',
    onSubmit: logIn,
    footer: ['No account yet? ', h('a', { href: '#/register' }, 'Create one')],
  });
}

function viewRegister() {
  return authForm({
    title: 'Create an account',
    submitLabel: 'Create account',
    withConfirm: true,
    onSubmit: async (email, password) => {
      await API.register(email, password);
      await logIn(email, password);
    },
    footer: ['Already registered? ', h('a', { href: '#/login' }, 'Log in')],
  });
}

function viewCameras() {
  const list = h('div', { id: 'camera-list', class: 'grid' });
  const msg = h('div');
  app.replaceChildren(
    h('div', { class: 'row spread' },
      h('h1', {}, 'Your cameras'),
      h('a', { class: 'button', href: '#/add', id: 'add-camera' }, '+ Add camera')),
    msg, list);
  let timer = null;
  let alive = true;
  const confirming = new Set();

  function card(d) {
    const watch = d.status === 'pending'
      ? h('button', { type: 'button', class: 'secondary', disabled: true, title: 'Not activated yet' }, 'Watch')
      : h('a', { class: 'button', href: `#/player/${d.id}`, dataset: { action: 'watch' } }, 'Watch');
    // A camera shared with us can only be watched: its owner alone renames, shares, deletes.
    const actions = d.shared ? [watch] : [watch, shareButton(d), deleteButton(d)];
    return h('article', { class: 'card', dataset: { deviceId: d.id, status: d.status, shared: d.shared ? 'true' : 'false' } },
      h('div', { class: 'row spread' }, h('h3', {}, d.device_name || 'Camera'), statusPill(d.status)),
      d.shared ? h('span', { class: 'shared-marker', dataset: { marker: 'shared' } }, 'Shared with me') : null,
      h('dl', { class: 'meta' },
        h('dt', {}, 'Model'), h('dd', {}, modelLabel(d.camera_model)),
        h('dt', {}, 'Last seen'), h('dd', {}, d.status === 'online' ? 'now' : ago(d.last_seen)),
        d.device_uid ? [h('dt', {}, 'UID'), h('dd', {}, d.device_uid)] : null,
        d.local_ip ? [h('dt', {}, 'Local IP'), h('dd', {}, d.local_ip)] : null,
        h('dt', {}, d.activated_at ? 'Activated' : 'Added'), h('dd', {}, ago(d.activated_at || d.created_at))),
      h('div', { class: 'actions' }, ...actions));
  }

  function shareButton(d) {
    return h('button', { type: 'button', class: 'secondary', dataset: { action: 'share' }, onclick: () => shareDialog(d) }, 'Share');
  }

  function deleteButton(d) {
    const del = h('button', { type: 'button', class: 'danger', dataset: { action: 'delete' } },
      confirming.has(d.id) ? 'Really delete?' : 'Delete');
    del.addEventListener('click', async () => {
      if (!confirming.has(d.id)) {
        confirming.add(d.id);
        del.textContent = 'Really delete?';
        setTimeout(() => { confirming.delete(d.id); if (del.isConnected) del.textContent = 'Delete'; }, 5000);
        return;
      }
      del.disabled = true;
      try {
        await API.deleteDevice(d.id);
        confirming.delete(d.id);
        refresh();
      } catch (e) {
        msg.replaceChildren(alertBox('error', `Delete failed: ${errorText(e)}`));
        del.disabled = false;
      }
    });
    return del;
  }

  async function refresh() {
    clearTimeout(timer);
    try {
      await models().catch(() => {});
      const data = await API.devices();
      const devices = Array.isArray(data) ? data : (data && data.devices) || [];
      if (!alive) return;
      msg.replaceChildren();
      if (!devices.length) {
        list.replaceChildren(h('div', { class: 'panel empty' },
          h('h2', {}, 'No cameras yet'),
          h('p', { class: 'muted' }, 'Add a camera: you get a QR code to show to its lens.'),
          h('a', { class: 'button', href: '#/add' }, 'Add your first camera')));
      } else {
        list.replaceChildren(...devices.map(card));
      }
    } catch (e) {
      if (!alive) return;
      msg.replaceChildren(alertBox('error', `Could not load cameras: ${errorText(e)}`));
    }
    if (alive) timer = setTimeout(refresh, 3000);
  }
  refresh();
  return () => {
    alive = false;
    clearTimeout(timer);
    document.getElementById('share-dialog')?.close();
  };
}

/**
 * The owner's "Share" dialog for camera `d`: invite by email, list who it is shared with,
 * revoke. It lives outside the camera grid, which re-renders every few seconds.
 */
function shareDialog(d) {
  document.getElementById('share-dialog')?.close();
  const email = h('input', { type: 'email', id: 'share-email', required: true, autocomplete: 'off', placeholder: 'friend@example.com' });
  const invite = h('button', { type: 'submit', id: 'share-invite' }, 'Invite');
  const msg = h('div', { id: 'share-msg' });
  const list = h('ul', { id: 'share-list', class: 'share-list' });
  const dlg = h('dialog', { id: 'share-dialog', class: 'share-dialog', 'aria-labelledby': 'share-title' });

  function row(s) {
    const revoke = h('button', { type: 'button', class: 'danger', dataset: { action: 'revoke' } }, 'Revoke');
    revoke.addEventListener('click', async () => {
      revoke.disabled = true;
      try {
        await API.revokeShare(d.id, s.id);
        msg.replaceChildren(alertBox('ok', `${s.email} can no longer watch this camera.`));
        await load();
      } catch (e) {
        msg.replaceChildren(alertBox('error', `Revoke failed: ${errorText(e)}`));
        revoke.disabled = false;
      }
    });
    return h('li', { dataset: { shareId: s.id, email: s.email } }, h('span', { class: 'share-email' }, s.email), revoke);
  }

  async function load() {
    try {
      const shares = await API.shares(d.id);
      list.replaceChildren(...(shares.length
        ? shares.map(row)
        : [h('li', { class: 'muted', id: 'share-none' }, 'Not shared with anyone yet.')]));
    } catch (e) {
      msg.replaceChildren(alertBox('error', `Could not load shares: ${errorText(e)}`));
    }
  }

  const form = h('form', { id: 'share-form', novalidate: true },
    h('label', { for: 'share-email' }, 'Email of their VisionConnect account'),
    h('div', { class: 'row' }, email, invite));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    invite.disabled = true;
    try {
      const r = await API.share(d.id, email.value);
      // The server answers alike whether or not the address has an account.
      msg.replaceChildren(alertBox('ok', `Invited ${r.share.email}. If that address has an account, they can watch now; otherwise invite them again once they have signed up.`));
      email.value = '';
      await load();
    } catch (e) {
      const text = e instanceof ApiError && e.code === 'share_limit'
        ? 'This camera is shared with the most people allowed. Revoke someone first.'
        : errorText(e);
      msg.replaceChildren(alertBox('error', text));
    } finally {
      invite.disabled = false;
    }
  });

  dlg.append(
    h('h2', { id: 'share-title' }, `Share “${d.device_name || 'Camera'}”`),
    h('p', { class: 'muted' }, 'They can watch live video. They cannot rename, delete or share the camera.'),
    form, msg,
    h('h3', {}, 'Shared with'), list,
    h('div', { class: 'row end' },
      h('button', { type: 'button', class: 'secondary', id: 'share-close', onclick: () => dlg.close() }, 'Close')));
  dlg.addEventListener('close', () => dlg.remove());
  document.body.append(dlg);
  dlg.showModal();
  email.focus();
  load();
}

function viewModels() {
  const grid = h('div', { class: 'grid', id: 'model-list' }, h('p', { class: 'muted' }, 'Loading…'));
  app.replaceChildren(h('h1', {}, 'Camera models'), grid);
  models().then((ms) => {
    grid.replaceChildren(...ms.map((m) => h('article', { class: 'card', dataset: { model: modelCode(m) } },
      h('h3', {}, modelName(m)),
      h('code', { class: 'muted' }, modelCode(m)),
      m.description ? h('p', { class: 'muted small' }, m.description) : null,
      h('div', { class: 'caps' }, capabilityChips(m.capabilities)))));
  }).catch((e) => grid.replaceChildren(alertBox('error', errorText(e))));
  return () => {};
}

function viewAdd() {
  const ctl = new AbortController();
  let alive = true;
  let countdown = null;
  const msg = h('div');
  const model = h('select', { id: 'camera-model', name: 'camera_model', required: true });
  const name = h('input', { id: 'device-name', name: 'device_name', required: true, maxlength: 64, placeholder: 'Front door' });
  const ssid = h('input', { id: 'wifi-ssid', name: 'wifi_ssid', required: true, maxlength: 32, autocomplete: 'off' });
  const pass = h('input', { id: 'wifi-password', name: 'wifi_password', type: 'password', maxlength: 63, autocomplete: 'off' });
  const show = h('input', { type: 'checkbox', id: 'show-pass' });
  show.addEventListener('change', () => { pass.type = show.checked ? 'text' : 'password'; });
  const button = h('button', { type: 'submit', id: 'onboard-submit', class: 'full' }, 'Create QR code');
  const form = h('form', { class: 'panel stack', id: 'onboard-form' },
    h('h1', {}, 'Add a camera'),
    h('p', { class: 'muted small' },
      'The camera learns your Wi-Fi and this server from a QR code. The Wi-Fi password goes into the code only; the server never stores it.'),
    msg,
    h('div', {}, h('label', { for: 'camera-model' }, 'Camera model'), model),
    h('div', {}, h('label', { for: 'device-name' }, 'Name'), name),
    h('div', {}, h('label', { for: 'wifi-ssid' }, 'Wi-Fi network (SSID)'), ssid),
    h('div', {}, h('label', { for: 'wifi-password' }, 'Wi-Fi password'), pass,
      h('div', { class: 'hint' }, h('label', { class: 'switch small' }, show, 'Show'), ' 8–63 characters, empty for an open network.')),
    button);
  app.replaceChildren(h('div', { class: 'narrow', style: 'max-width: 520px' }, form));
  models().then((ms) => {
    model.replaceChildren(...ms.map((m) => h('option', { value: modelCode(m) }, modelName(m))));
  }).catch((e) => msg.replaceChildren(alertBox('error', `Could not load camera models: ${errorText(e)}`)));

  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    msg.replaceChildren();
    button.disabled = true;
    try {
      const r = await API.onboard({
        camera_model: model.value,
        device_name: name.value.trim(),
        wifi_ssid: ssid.value,
        wifi_password: pass.value,
      });
      if (alive) showQr(r);
    } catch (e) {
      msg.replaceChildren(alertBox('error', errorText(e), 'form-error'));
    } finally {
      button.disabled = false;
    }
  });

  function showQr(r) {
    let payload = r.qr_payload;
    if (typeof payload === 'string') {
      try { payload = JSON.parse(payload); } catch { /* shown as is */ }
    }
    const payloadText = typeof payload === 'string' ? payload : JSON.stringify(payload, null, 2);
    const expires = toDate(r.expires_at ?? (payload && payload.expires_at));
    const status = h('div', { id: 'onboard-status', class: 'alert info', dataset: { state: 'waiting' } },
      h('div', { class: 'row' }, h('span', { class: 'spinner', style: 'border-color: var(--border); border-top-color: var(--accent); width: 18px; height: 18px' }),
        'Waiting for the camera to scan the code…'));
    const timeLeft = h('span', { id: 'qr-expiry' });
    const tick = () => {
      if (!expires) return;
      const s = Math.max(0, Math.round((expires.getTime() - Date.now()) / 1000));
      timeLeft.textContent = s > 0 ? `Code valid for ${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}` : 'Code expired';
    };
    tick();
    countdown = setInterval(tick, 1000);
    app.replaceChildren(
      h('h1', {}, `Add “${name.value.trim()}”`),
      h('div', { class: 'onboard' },
        h('section', { class: 'panel qr' },
          h('img', { id: 'qr-image', src: r.qr_code, alt: 'Onboarding QR code', width: 320, height: 320 }),
          h('div', { class: 'muted small' }, timeLeft),
          h('p', { class: 'small', style: 'text-align:center' },
            'Power the camera on and hold this code 15–30 cm in front of its lens.')),
        h('section', { class: 'panel stack' },
          status,
          h('h2', {}, 'What the code says'),
          h('pre', { id: 'qr-payload' }, payloadText),
          h('div', { class: 'row' }, h('a', { class: 'button secondary', href: '#/cameras' }, 'Back to cameras')))));
    waitForActivation(r.device_token, expires, status);
  }

  async function waitForActivation(token, expires, status) {
    while (alive) {
      if (expires && Date.now() > expires.getTime() + 2000) {
        setStatus(status, 'expired', 'error', 'The code expired before the camera used it. Create a new one.');
        return;
      }
      try {
        const r = await API.checkStatus(token, 30, ctl.signal);
        if (r && r.activated) {
          setStatus(status, 'activated', 'ok', 'Camera activated! ',
            h('a', { href: `#/player/${r.device_id}`, id: 'watch-new' }, 'Watch it now'), ' or ',
            h('a', { href: '#/cameras' }, 'see all cameras'), '.');
          return;
        }
      } catch (e) {
        if (e.name === 'AbortError' || !alive) return;
        if (e.status === 410 || e.status === 404) {
          setStatus(status, 'expired', 'error', `${errorText(e)}. Create a new code.`);
          return;
        }
        if (e.status === 401) return;
        await new Promise((res) => setTimeout(res, 2000));
      }
    }
  }

  function setStatus(el, state, kind, ...content) {
    el.className = `alert ${kind}`;
    el.dataset.state = state;
    el.replaceChildren(...content);
  }

  return () => { alive = false; ctl.abort(); clearInterval(countdown); };
}

function fmtStats(s) {
  if (!s || !s.local) return s && s.connectionState !== 'closed' ? `ICE ${s.iceConnectionState}` : '—';
  const l = s.local;
  const r = s.remote || {};
  const kind = l.candidateType === 'relay' || r.candidateType === 'relay' ? 'relayed' : 'direct';
  const via = l.candidateType === 'relay' ? ` via ${l.url || 'TURN'} (${l.relayProtocol || l.protocol})` : ` ${l.protocol}`;
  const parts = [
    `${kind}: ${l.candidateType}/${r.candidateType}${via}`,
    s.bitrateKbps != null ? `${Math.round(s.bitrateKbps)} kbit/s` : null,
    s.frameWidth ? `${s.frameWidth}×${s.frameHeight}` : null,
    s.framesPerSecond != null ? `${Math.round(s.framesPerSecond)} fps` : null,
    `${s.framesDecoded} frames decoded`,
    s.rttMs != null ? `rtt ${Math.round(s.rttMs)} ms` : null,
  ];
  return parts.filter(Boolean).join(' · ');
}

let currentPlayer = null;
// Test hook (and handy in the console): the live session's selected pair and video counters.
window.vcStats = async () => {
  if (!currentPlayer) return null;
  const s = await currentPlayer.stats();
  s.bitrateKbps = currentPlayer.last ? currentPlayer.last.bitrateKbps : null;
  return s;
};

function viewPlayer(deviceId, query) {
  const saved = localStorage.getItem('vc.relayOnly') === '1';
  const relayOnly = query.has('relay') ? query.get('relay') === '1' : saved;
  const title = h('h1', { id: 'player-title', style: 'margin:0' }, 'Camera');
  let pill = statusPill('', 'device-status');
  const video = h('video', { id: 'video', autoplay: true, playsinline: true, muted: true });
  video.muted = true;
  const overlayText = h('div', { id: 'player-state-text' }, STATES.connecting);
  const overlaySub = h('div', { class: 'small', style: 'font-weight:400;opacity:.85' });
  const spinner = h('div', { class: 'spinner' });
  const overlay = h('div', { class: 'overlay', id: 'player-state', dataset: { state: 'connecting' } }, spinner, overlayText, overlaySub);
  const badge = h('span', { class: 'badge' }, '…');
  const statsLine = h('div', { class: 'statsline', id: 'stats-line' }, '—');
  const relaySwitch = h('input', { type: 'checkbox', id: 'relay-only', checked: relayOnly });
  const reconnectBtn = h('button', { type: 'button', class: 'secondary', id: 'reconnect' }, 'Reconnect');
  const logBox = h('pre', { class: 'log', id: 'player-log' });
  const dd = {};
  const dl = h('dl', {}, ...['Path', 'Local', 'Remote', 'TURN', 'Video', 'Bitrate', 'Frames', 'RTT', 'Camera'].flatMap((k) => {
    dd[k] = h('dd', {}, '—');
    return [h('dt', {}, k), dd[k]];
  }));

  app.replaceChildren(
    h('div', { class: 'row spread', style: 'margin-bottom: 1rem' },
      h('div', { class: 'row' }, h('a', { href: '#/cameras', 'aria-label': 'Back to cameras' }, '←'), title, pill),
      h('div', { class: 'row' },
        h('label', { class: 'switch', title: 'Force all media through the TURN relay' }, relaySwitch, 'Relay only'),
        reconnectBtn)),
    h('div', { class: 'player' },
      h('section', {},
        h('div', { class: 'stage' }, video, overlay, badge),
        statsLine),
      h('aside', { class: 'panel side stack' },
        h('h2', {}, 'Connection'), dl,
        h('details', {}, h('summary', { class: 'small muted' }, 'Event log'), logBox))));

  const logLines = [];
  const player = new Player({
    deviceId,
    video,
    relayOnly,
    onState: (state, detail) => {
      overlay.dataset.state = state;
      overlay.hidden = state === 'playing';
      overlay.classList.toggle('offline', state === 'offline' || state === 'error');
      spinner.hidden = state === 'offline' || state === 'error' || state === 'stopped';
      overlayText.textContent = state === 'offline' ? 'Camera offline' : (detail || STATES[state] || state);
      overlaySub.textContent = state === 'offline'
        ? 'The camera is not connected. Retrying automatically…'
        : '';
      badge.textContent = state === 'playing' ? 'LIVE' : (state === 'offline' ? 'OFFLINE' : '…');
      badge.classList.toggle('live', state === 'playing');
      if (state === 'offline') pill.replaceWith(pill = statusPill('offline', 'device-status'));
    },
    onLog: (line) => {
      logLines.push(line);
      if (logLines.length > 200) logLines.shift();
      logBox.textContent = logLines.join('\n');
      logBox.scrollTop = logBox.scrollHeight;
    },
    onStats: (s) => {
      statsLine.textContent = fmtStats(s);
      const l = s.local;
      const r = s.remote;
      dd.Path.textContent = l ? (l.candidateType === 'relay' || (r && r.candidateType === 'relay') ? 'relayed (TURN)' : 'direct') : '—';
      dd.Local.textContent = l ? `${l.candidateType} ${l.protocol} ${l.address ?? ''}:${l.port ?? ''}` : '—';
      dd.Remote.textContent = r ? `${r.candidateType} ${r.protocol} ${r.address ?? ''}:${r.port ?? ''}` : '—';
      dd.TURN.textContent = l && l.candidateType === 'relay' ? `${l.url || '?'} (${l.relayProtocol || '?'})` : '—';
      dd.Video.textContent = s.frameWidth ? `${s.frameWidth}×${s.frameHeight} ${s.codec || ''} ${s.framesPerSecond != null ? Math.round(s.framesPerSecond) + ' fps' : ''}` : '—';
      dd.Bitrate.textContent = s.bitrateKbps != null ? `${Math.round(s.bitrateKbps)} kbit/s` : '—';
      dd.Frames.textContent = String(s.framesDecoded || 0);
      dd.RTT.textContent = s.rttMs != null ? `${Math.round(s.rttMs)} ms (data channel)` : '—';
    },
    onInfo: (info) => {
      dd.Camera.textContent = Object.entries(info).map(([k, v]) => `${k}: ${typeof v === 'object' ? JSON.stringify(v) : v}`).join(', ');
    },
  });
  currentPlayer = player;

  relaySwitch.addEventListener('change', () => {
    localStorage.setItem('vc.relayOnly', relaySwitch.checked ? '1' : '0');
    player.setRelayOnly(relaySwitch.checked);
  });
  reconnectBtn.addEventListener('click', () => player.reconnect());

  let alive = true;
  let devTimer = null;
  async function refreshDevice() {
    try {
      const d = await API.device(deviceId);
      if (!alive) return;
      title.textContent = d.device_name || 'Camera';
      document.title = `${d.device_name || 'Camera'} · VisionConnect`;
      const st = player.state === 'playing' ? 'online' : d.status;
      pill.replaceWith(pill = statusPill(st, 'device-status'));
    } catch (e) {
      if (!alive) return;
      if (e.status === 404) {
        player.stop();
        overlay.hidden = false;
        overlay.dataset.state = 'error';
        overlayText.textContent = 'This camera does not exist (deleted?).';
        spinner.hidden = true;
        return;
      }
    }
    if (alive) devTimer = setTimeout(refreshDevice, 5000);
  }
  refreshDevice();
  player.start();
  return () => {
    alive = false;
    clearTimeout(devTimer);
    player.stop();
    if (currentPlayer === player) currentPlayer = null;
    document.title = 'VisionConnect';
  };
}

// ---- router ------------------------------------------------------------------------------

let cleanup = () => {};

function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

function route() {
  cleanup();
  cleanup = () => {};
  const raw = location.hash.replace(/^#\/?/, '');
  const [path, qs] = raw.split('?');
  const parts = path.split('/').filter(Boolean);
  const query = new URLSearchParams(qs || '');
  const loggedIn = !!session.token;
  nav.hidden = !loggedIn;
  whoami.textContent = loggedIn ? `Signed in as ${session.email}` : '';
  const name = parts[0] || (loggedIn ? 'cameras' : 'login');
  for (const a of nav.querySelectorAll('a[data-route]')) a.classList.toggle('active', a.dataset.route === name);
  if (!loggedIn && name !== 'login' && name !== 'register') {
    go('#/login');
    return;
  }
  if (loggedIn && (name === 'login' || name === 'register')) {
    go('#/cameras');
    return;
  }
  const views = {
    login: viewLogin,
    register: viewRegister,
    cameras: viewCameras,
    add: viewAdd,
    models: viewModels,
    player: () => (parts[1] ? viewPlayer(parts[1], query) : viewCameras()),
  };
  const view = views[name] || viewCameras;
  cleanup = view() || (() => {});
  window.scrollTo(0, 0);
}

setUnauthorizedHandler(() => {
  session.clear();
  go('#/login');
});
document.getElementById('logout').addEventListener('click', () => {
  session.clear();
  go('#/login');
});
window.addEventListener('hashchange', route);
route();
