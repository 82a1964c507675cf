// The web app's camera sharing (issue 12) in headless Chromium, driven by
// tests/tests/sharing.rs: the owner opens "Share" on a camera, invites the invitee, sees it
// listed; the invitee sees the camera marked "Shared with me" with Watch only (no Share, no
// Delete); the owner revokes in the dialog; the invitee's list no longer has the camera.
// The Rust parent made the accounts (password `password123`) and the camera.
//
// Prints `RESULT <json>` last. Exit 0: every check passed; 1: a check failed; 2: the kit failed.

import { mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';

import { HarnessError, launch } from '../browser/lib/chromium.mjs';

const { values: args } = parseArgs({
  options: {
    'base-url': { type: 'string' },
    owner: { type: 'string' },
    invitee: { type: 'string' },
    device: { type: 'string' },
    artifacts: { type: 'string', default: 'tests/e2e/artifacts' },
  },
});
if (!args['base-url'] || !args.owner || !args.invitee || !args.device) {
  console.error('usage: sharing.mjs --base-url URL --owner EMAIL --invitee EMAIL --device ID [--artifacts DIR]');
  process.exit(2);
}
const BASE = args['base-url'].replace(/\/$/, '');
const ARTIFACTS = resolve(args.artifacts);
mkdirSync(ARTIFACTS, { recursive: true });
const STEP_MS = 10_000;

const checks = [];
class CheckFailed extends Error {}
function check(name, ok, detail) {
  checks.push({ name, ok: !!ok, detail });
  process.stderr.write(`[sharing.mjs] ${ok ? 'PASS' : 'FAIL'} ${name}${detail !== undefined ? ': ' + JSON.stringify(detail) : ''}\n`);
  if (!ok) throw new CheckFailed(`${name}: ${JSON.stringify(detail)}`);
}

const { page, close } = await launch({ deadlineMs: 90_000 }).catch((e) => {
  console.log(`RESULT ${JSON.stringify({ error: e.message })}`);
  process.exit(2);
});
const card = `article.card[data-device-id="${args.device}"]`;

async function logInAs(email) {
  // A fresh start each time: no session left from the previous user.
  await page.goto(`${BASE}/#/login`);
  await page.evaluate(() => localStorage.clear());
  await page.goto(`${BASE}/#/login`);
  await page.reload();
  await page.fill('#email', email);
  await page.fill('#password', 'password123');
  await page.click('#submit');
  await page.waitForSelector('#camera-list', { timeout: STEP_MS });
}

let code = 0;
try {
  // Owner: Share dialog, invite, listed.
  await logInAs(args.owner);
  await page.waitForSelector(card, { timeout: STEP_MS });
  check('owner card is not marked shared', (await page.getAttribute(card, 'data-shared')) === 'false');
  await page.click(`${card} [data-action="share"]`);
  await page.waitForSelector('#share-dialog[open] #share-none', { timeout: STEP_MS });
  await page.fill('#share-email', args.invitee);
  await page.click('#share-invite');
  const row = `#share-list li[data-email="${args.invitee}"]`;
  await page.waitForSelector(row, { timeout: STEP_MS });
  const said = await page.textContent('#share-msg');
  check('invite confirmed', said.includes('Invited'), said);
  await page.screenshot({ path: join(ARTIFACTS, 'sharing-dialog.png') });
  await page.click('#share-close');
  // The dialog's `close` event (which removes it) fires asynchronously.
  await page.waitForSelector('#share-dialog', { state: 'detached', timeout: STEP_MS });
  check('dialog closed', (await page.$('#share-dialog')) === null);

  // Invitee: marked, watch only.
  await logInAs(args.invitee);
  await page.waitForSelector(`${card}[data-shared="true"]`, { timeout: STEP_MS });
  const marker = await page.textContent(`${card} [data-marker="shared"]`);
  check('invitee sees "Shared with me"', marker === 'Shared with me', marker);
  check('invitee has no Share button', (await page.$(`${card} [data-action="share"]`)) === null);
  check('invitee has no Delete button', (await page.$(`${card} [data-action="delete"]`)) === null);
  check('invitee can watch', (await page.$(`${card} [data-action="watch"]`)) !== null);
  await page.screenshot({ path: join(ARTIFACTS, 'sharing-invitee.png') });

  // Owner revokes in the dialog.
  await logInAs(args.owner);
  await page.waitForSelector(card, { timeout: STEP_MS });
  await page.click(`${card} [data-action="share"]`);
  await page.waitForSelector(`#share-dialog[open] ${row}`, { timeout: STEP_MS });
  await page.click(`${row} [data-action="revoke"]`);
  await page.waitForSelector('#share-dialog #share-none', { timeout: STEP_MS });
  check('revoked share gone from the dialog', (await page.$(row)) === null);

  // Invitee: the camera is gone from its list.
  await logInAs(args.invitee);
  await page.waitForSelector('#camera-list .empty', { timeout: STEP_MS });
  check('invitee no longer lists the camera', (await page.$(card)) === null);
} catch (e) {
  // A selector that never appeared is a failed check too; anything else is the kit's.
  const failed = e instanceof CheckFailed || e.name === 'TimeoutError';
  code = failed && !(e instanceof HarnessError) ? 1 : 2;
  if (!(e instanceof CheckFailed)) checks.push({ name: e.name, ok: false, detail: e.message });
  await page.screenshot({ path: join(ARTIFACTS, 'sharing-failure.png') }).catch(() => {});
} finally {
  await close();
}
console.log(`RESULT ${JSON.stringify({ checks })}`);
process.exit(code);
