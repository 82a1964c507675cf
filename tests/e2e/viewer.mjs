// End-to-end proof of the viewer app (issue 6), driven by tests/tests/e2e_viewer.rs.
//
// Headless Chromium (tests/browser kit) walks the web app that vc-control serves: register,
// models, add a camera, hand the QR PNG the page shows to the camera (the Rust parent runs
// `vc-camera onboard --qr <file>` and then `vc-camera run`), see the camera turn online, watch
// it relay-only (selected pair relay/relay through vc-relay, >= 30 frames decoded), then with
// direct candidates allowed, kill the camera (page shows "camera offline"), restart it (page
// recovers), delete it. Screenshots go to --artifacts.
//
// Talking to the parent: this script prints `STEP <name> <json>` on stdout and waits for one
// line on stdin, `OK [json]` or `ERR <message>`. The last stdout line is `RESULT <json>`.
// Exit 0: every check passed; 1: a check failed; 2: the kit failed.

import { mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';

import { HarnessError, launch } from '../browser/lib/chromium.mjs';

const { values: args } = parseArgs({
  options: {
    'base-url': { type: 'string' },
    'turn-addr': { type: 'string' },
    artifacts: { type: 'string', default: 'tests/e2e/artifacts' },
    'min-frames': { type: 'string', default: '30' },
    'offline-ms': { type: 'string', default: '10000' },
    'deadline-ms': { type: 'string', default: '200000' },
    // The TURN URL the viewer's relay candidate must come from (default `turn:<turn-addr>`).
    'turn-url': { type: 'string' },
    // Stop after the relay-only phase (the HTTPS/WSS/TURNS run proves the transports only).
    'relay-walk-only': { type: 'boolean', default: false },
    // Extra Chromium flags, e.g. --ignore-certificate-errors for the test certificate.
    flag: { type: 'string', multiple: true, default: [] },
  },
});
if (!args['base-url'] || !args['turn-addr']) {
  console.error('usage: viewer.mjs --base-url http://HOST:PORT --turn-addr HOST:PORT [--artifacts DIR]');
  process.exit(2);
}
const BASE = args['base-url'].replace(/\/$/, '');
const TURN_ADDR = args['turn-addr'];
const TURN_HOST = TURN_ADDR.replace(/:\d+$/, '');
const TURN_URL = args['turn-url'] || `turn:${TURN_ADDR}`;
const ARTIFACTS = resolve(args.artifacts);
const MIN_FRAMES = Number(args['min-frames']);
const OFFLINE_MS = Number(args['offline-ms']);
mkdirSync(ARTIFACTS, { recursive: true });

const t0 = Date.now();
const facts = { checks: [] };
const log = (line) => process.stderr.write(`[viewer.mjs +${((Date.now() - t0) / 1000).toFixed(1)}s] ${line}\n`);

class CheckFailed extends Error {}
function check(name, ok, detail) {
  facts.checks.push({ name, ok: !!ok, detail });
  log(`${ok ? 'PASS' : 'FAIL'} ${name}${detail !== undefined ? ': ' + JSON.stringify(detail) : ''}`);
  if (!ok) throw new CheckFailed(`${name}: ${JSON.stringify(detail)}`);
}

// ---- the parent's side of the conversation -------------------------------------------------
const stdin = createInterface({ input: process.stdin });
const replies = [];
const waiters = [];
stdin.on('line', (line) => {
  if (waiters.length) waiters.shift()(line);
  else replies.push(line);
});
async function step(name, data = {}) {
  process.stdout.write(`STEP ${name} ${JSON.stringify(data)}\n`);
  const line = replies.length ? replies.shift() : await new Promise((res) => waiters.push(res));
  if (!line.startsWith('OK')) throw new CheckFailed(`parent could not do ${name}: ${line}`);
  const rest = line.slice(2).trim();
  return rest ? JSON.parse(rest) : {};
}

// ---- helpers --------------------------------------------------------------------------------
/** Polls `window.vcStats()` until `pred(stats)` holds; returns those stats. */
async function waitStats(page, what, pred, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  let last = null;
  while (Date.now() < deadline) {
    last = await page.evaluate(() => (window.vcStats ? window.vcStats() : null));
    if (last && pred(last)) return last;
    await page.waitForTimeout(250);
  }
  const events = await page.evaluate(() => document.getElementById('player-log')?.textContent || '');
  log(`player log:\n${events}`);
  throw new CheckFailed(`${what}: not reached within ${timeoutMs} ms; last stats ${JSON.stringify(last)}`);
}

const summary = (s) => ({
  state: s.state,
  local: s.local,
  remote: s.remote,
  framesDecoded: s.framesDecoded,
  frame: s.frameWidth ? `${s.frameWidth}x${s.frameHeight}` : null,
  bitrateKbps: s.bitrateKbps != null ? Math.round(s.bitrateKbps) : null,
  codec: s.codec,
});

async function main() {
  const { page, close } = await launch({
    // Host candidates as real addresses (no mDNS names) so the direct phase can pair them;
    // the page's muted video may autoplay without a gesture.
    flags: ['--disable-features=WebRtcHideLocalIpsWithMdns', '--autoplay-policy=no-user-gesture-required', ...args.flag],
    deadlineMs: Number(args['deadline-ms']),
    viewport: { width: 1200, height: 760 },
    onConsole: (t) => log(`console: ${t}`),
  });
  page.on('pageerror', (e) => {
    facts.pageErrors = (facts.pageErrors || 0) + 1;
    log(`page error: ${e.message}`);
  });
  page.setDefaultTimeout(30_000);
  try {
    // 1. Register (logs in as well) ------------------------------------------------------------
    const email = `viewer-${Date.now()}-${Math.floor(Math.random() * 1e6)}@example.com`;
    const password = 'correct horse battery';
    await page.goto(`${BASE}/`);
    await page.waitForSelector('form #email');
    check('unauthenticated visitor gets the login form', (await page.textContent('h1')) === 'Log in', page.url());
    await page.click('a[href="#/register"]');
    await page.fill('#email', email);
    await page.fill('#password', password);
    await page.fill('#password2', password);
    await page.click('#submit');
    await page.waitForSelector('#camera-list');
    check('registered and logged in', await page.evaluate(() => !!localStorage.getItem('vc.token')), email);

    // Log out and in again through the login form.
    await page.click('#logout');
    await page.waitForSelector('form #email');
    await page.fill('#email', email);
    await page.fill('#password', 'wrong password!');
    await page.click('#submit');
    const err = await page.waitForSelector('#form-error');
    check('wrong password is refused', (await err.textContent()).length > 0, await err.textContent());
    await page.fill('#password', password);
    await page.click('#submit');
    await page.waitForSelector('#camera-list');
    check('logged in through the form', true);

    // 2. Models ------------------------------------------------------------------------------
    await page.click('nav a[data-route="models"]');
    await page.waitForSelector('#model-list [data-model]');
    const models = await page.$$eval('#model-list [data-model]', (els) => els.map((e) => e.dataset.model));
    check('camera models listed', models.length >= 3 && models.includes('CP_PLUS_WIFI_V2'), models);

    // 3. Add a camera: QR + payload ----------------------------------------------------------
    await page.click('nav a[data-route="add"]');
    await page.waitForSelector('#camera-model option[value="CP_PLUS_WIFI_V2"]', { state: 'attached' });
    await page.selectOption('#camera-model', 'CP_PLUS_WIFI_V2');
    await page.fill('#device-name', 'Front door');
    await page.fill('#wifi-ssid', 'HomeNet');
    await page.fill('#wifi-password', 'correct horse');
    await page.click('#onboard-submit');
    const qrSrc = await (await page.waitForSelector('#qr-image')).getAttribute('src');
    check('page shows the QR as a PNG', qrSrc.startsWith('data:image/png;base64,'), qrSrc.slice(0, 40));
    const qrFile = join(ARTIFACTS, 'onboarding-qr.png');
    writeFileSync(qrFile, Buffer.from(qrSrc.split(',')[1], 'base64'));
    const payload = JSON.parse(await page.textContent('#qr-payload'));
    check('page shows the QR payload', payload.wifi_ssid === 'HomeNet' && !!payload.device_token, {
      ...payload, wifi_password: '***', device_token: '***',
    });
    await page.screenshot({ path: join(ARTIFACTS, 'onboarding.png') });

    // 4. The camera scans it; the page's long-poll sees the activation -----------------------
    const tScan = Date.now();
    await step('onboard', { qr: qrFile, relay_only: true });
    await page.waitForSelector('#onboard-status[data-state="activated"]', { timeout: 30_000 });
    check('long-poll reports the activation', true, { ms: Date.now() - tScan });

    // 5. Camera list: online -----------------------------------------------------------------
    await page.click('nav a[data-route="cameras"]');
    const card = await page.waitForSelector('#camera-list article[data-status="online"]', { timeout: 30_000 });
    const deviceId = await card.getAttribute('data-device-id');
    check('camera turns online in the list', !!deviceId, { deviceId, ms: Date.now() - tScan });

    // 6. Player, relay only ------------------------------------------------------------------
    await card.$('a[data-action="watch"]').then((a) => a.click());
    await page.waitForSelector('#relay-only');
    if (!(await page.isChecked('#relay-only'))) await page.check('#relay-only');
    const relay = await waitStats(page, 'relay-only video',
      (s) => s.relayOnly && s.state === 'playing' && s.local && s.framesDecoded >= MIN_FRAMES, 45_000);
    facts.relay = summary(relay);
    check('relay only: local candidate is relay', relay.local.candidateType === 'relay', relay.local);
    check('relay only: remote candidate is relay', relay.remote && relay.remote.candidateType === 'relay', relay.remote);
    check('relay only: through vc-relay', (relay.local.url || '').startsWith(TURN_URL)
      && relay.remote.address === TURN_HOST, { url: relay.local.url, remote: relay.remote.address, TURN_URL, TURN_ADDR });
    check(`relay only: >= ${MIN_FRAMES} frames decoded`, relay.framesDecoded >= MIN_FRAMES, relay.framesDecoded);
    await page.waitForTimeout(1200); // one more stats tick so the stats line shows a bitrate
    await page.screenshot({ path: join(ARTIFACTS, 'player-relay.png') });
    facts.statsLineRelay = await page.textContent('#stats-line');
    if (args['relay-walk-only']) {
      check('no uncaught page errors', !facts.pageErrors, facts.pageErrors || 0);
      facts.passed = true;
      return;
    }

    // 7. Player, direct candidates allowed (the camera restarted without --relay-only) -------
    await page.uncheck('#relay-only');
    await step('restart-camera', { relay_only: false });
    const direct = await waitStats(page, 'direct video',
      (s) => !s.relayOnly && s.state === 'playing' && s.local && s.framesDecoded >= MIN_FRAMES, 45_000);
    facts.direct = summary(direct);
    check('direct: no relay on the selected pair',
      direct.local.candidateType !== 'relay' && direct.remote && direct.remote.candidateType !== 'relay',
      { local: direct.local, remote: direct.remote });
    check(`direct: >= ${MIN_FRAMES} frames decoded`, direct.framesDecoded >= MIN_FRAMES, direct.framesDecoded);
    await page.waitForTimeout(1200);
    await page.screenshot({ path: join(ARTIFACTS, 'player-direct.png') });
    facts.statsLineDirect = await page.textContent('#stats-line');

    // Phone width: nothing overflows sideways.
    await page.setViewportSize({ width: 390, height: 844 });
    await page.waitForTimeout(300);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    await page.screenshot({ path: join(ARTIFACTS, 'player-phone.png'), fullPage: true });
    check('player fits a phone-width screen', overflow <= 1, { overflowPx: overflow });
    await page.setViewportSize({ width: 1200, height: 760 });

    // 8. Camera killed mid-stream -> "camera offline" ----------------------------------------
    await page.check('#relay-only');
    await waitStats(page, 'relay-only video before the kill',
      (s) => s.relayOnly && s.state === 'playing' && s.framesDecoded >= 10, 45_000);
    const tKill = Date.now();
    await step('kill-camera');
    await page.waitForSelector('#player-state[data-state="offline"]', { state: 'visible', timeout: OFFLINE_MS });
    const offlineMs = Date.now() - tKill;
    facts.offlineMs = offlineMs;
    const overlayText = await page.textContent('#player-state');
    check('camera killed: page says "Camera offline"', /camera offline/i.test(overlayText), { offlineMs, overlayText });
    await page.screenshot({ path: join(ARTIFACTS, 'player-offline.png') });

    // 9. Camera back -> the page recovers by itself ------------------------------------------
    const tBack = Date.now();
    await step('start-camera', { relay_only: true });
    const back = await waitStats(page, 'video after the camera restarted',
      (s) => s.state === 'playing' && s.local && s.framesDecoded >= MIN_FRAMES, 60_000);
    facts.recoverMs = Date.now() - tBack;
    facts.recovered = summary(back);
    check('camera restarted: video recovers without a reload', back.local.candidateType === 'relay', facts.recoverMs);

    // 10. Sharing (issue 12): a second account, in its own browser context, watches the shared
    // camera; the owner revokes; the invitee's player stops within 2 s, the owner's plays on.
    const api = async (method, path, token, body) => {
      const r = await fetch(`${BASE}${path}`, {
        method,
        headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
        body: body ? JSON.stringify(body) : undefined,
      });
      const text = await r.text();
      return { status: r.status, body: text ? JSON.parse(text) : null };
    };
    const ownerToken = await page.evaluate(() => localStorage.getItem('vc.token'));
    const inviteeEmail = `invitee-${Date.now()}-${Math.floor(Math.random() * 1e6)}@example.com`;
    const reg = await api('POST', '/api/register', null, { email: inviteeEmail, password });
    check('share: invitee account registered', reg.status === 201, reg);
    const shared = await api('POST', `/api/camera/devices/${deviceId}/shares`, ownerToken,
      { email: inviteeEmail, role: 'viewer' });
    check('share: owner invited the second account', shared.status === 202 && !!shared.body?.share?.id, shared);
    // Its own browser profile: nothing (storage, cookies) is shared with the owner's.
    const invitee = await launch({
      flags: ['--autoplay-policy=no-user-gesture-required'],
      deadlineMs: Number(args['deadline-ms']),
      viewport: { width: 1200, height: 760 },
      onConsole: (t) => log(`invitee console: ${t}`),
    });
    try {
      const page2 = invitee.page;
      page2.on('pageerror', (e) => {
        facts.pageErrors = (facts.pageErrors || 0) + 1;
        log(`invitee page error: ${e.message}`);
      });
      page2.setDefaultTimeout(30_000);
      await page2.goto(`${BASE}/`);
      await page2.waitForSelector('form #email');
      await page2.fill('#email', inviteeEmail);
      await page2.fill('#password', password);
      await page2.click('#submit');
      const card2 = await page2.waitForSelector(`#camera-list article[data-device-id="${deviceId}"]`);
      check('share: invitee lists the camera marked shared',
        !!(await card2.$('[data-marker="shared"]')), await card2.textContent());
      await card2.$('a[data-action="watch"]').then((a) => a.click());
      await page2.waitForSelector('#relay-only');
      const inv = await waitStats(page2, 'invitee video',
        (s) => s.state === 'playing' && s.local && s.framesDecoded >= MIN_FRAMES, 45_000);
      facts.invitee = summary(inv);
      check('share: invitee plays the shared camera', inv.framesDecoded >= MIN_FRAMES, facts.invitee);
      await page2.screenshot({ path: join(ARTIFACTS, 'player-invitee.png') });

      const tRevoke = Date.now();
      const revoked = await api('DELETE', `/api/camera/devices/${deviceId}/shares/${shared.body.share.id}`, ownerToken);
      check('share: owner revoked it', revoked.status === 204 || revoked.status === 200, revoked.status);
      // Stopped: no longer playing (the relay closed its session; its tickets are refused).
      const after = await waitStats(page2, 'invitee player after the revocation',
        (s) => s.state !== 'playing' && s.state !== 'stalled', 10_000);
      facts.revokeStopMs = Date.now() - tRevoke;
      check('share revoked: invitee player stops within 2 s', facts.revokeStopMs <= 2000,
        { ms: facts.revokeStopMs, state: after.state });
      // It does not come back: its next ticket request is refused (the camera is not its own).
      const refused = await waitStats(page2, 'invitee refused a new ticket', (s) => s.state === 'error', 10_000);
      check('share revoked: the invitee gets no new ticket', refused.state === 'error', refused.state);
      await page2.screenshot({ path: join(ARTIFACTS, 'player-invitee-revoked.png') });
      const owner = await waitStats(page, 'owner video after the revocation',
        (s) => s.state === 'playing' && s.framesDecoded > back.framesDecoded, 10_000);
      check('share revoked: the owner keeps watching', owner.state === 'playing', summary(owner));
    } finally {
      await invitee.close();
    }

    // 11. Delete the camera from the list ----------------------------------------------------
    await page.click('nav a[data-route="cameras"]');
    const del = `#camera-list article[data-device-id="${deviceId}"] button[data-action="delete"]`;
    await page.click(del);
    await page.click(del); // second click confirms
    await page.waitForSelector(`#camera-list article[data-device-id="${deviceId}"]`, { state: 'detached' });
    check('camera deleted from the list', true);

    check('no uncaught page errors', !facts.pageErrors, facts.pageErrors || 0);
    facts.passed = true;
  } catch (e) {
    facts.passed = false;
    facts.error = e.message;
    await page.screenshot({ path: join(ARTIFACTS, 'failure.png') }).catch(() => {});
    log(`FAIL: ${e.message}`);
    if (e instanceof HarnessError) throw e;
  } finally {
    await close();
  }
}

let code = 0;
try {
  await main();
  code = facts.passed ? 0 : 1;
} catch (e) {
  facts.passed = false;
  facts.error = e instanceof HarnessError ? `kit: ${e.message}` : `harness: ${e.stack || e.message}`;
  code = 2;
}
facts.seconds = (Date.now() - t0) / 1000;
process.stdout.write(`RESULT ${JSON.stringify(facts)}\n`);
stdin.close();
process.exit(code);
