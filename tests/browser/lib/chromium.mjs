// Launch Debian's Chromium headless through playwright-core, for VisionConnect's tests.
//
// Generic on purpose: the TURN call (turn-call.mjs) and the end-to-end viewer test both use it.
// No browser is ever downloaded: playwright-core drives the system binary given by
// `$CHROMIUM` (default /usr/bin/chromium). Every launch gets a fresh profile dir that is
// removed on close, and the whole browser is bounded by a deadline so that a wedged
// Chromium can never outlive its test.

import { accessSync, constants, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

// Imported on first launch, so that a missing `npm ci` is reported as such.
async function playwrightChromium() {
  try {
    return (await import('playwright-core')).chromium;
  } catch (err) {
    throw new HarnessError(
      `playwright-core is not installed (${err.code || err.message}): run ` +
        '`npm ci --prefix tests/browser --no-audit --no-fund` (bash .ci/setup does)',
    );
  }
}

/** The Chromium binary used by every test. */
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

/** Flags every launch gets (the ones proven in ../shared/browser-turn-test). */
export const BASE_FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** Thrown for problems of the test kit itself (as opposed to a failed check). */
export class HarnessError extends Error {}

function checkExecutable(path) {
  try {
    accessSync(path, constants.X_OK);
  } catch {
    throw new HarnessError(
      `Chromium not found or not executable at ${path}: install Debian's \`chromium\` ` +
        '(bash .ci/setup does) or point $CHROMIUM at a Chromium binary',
    );
  }
}

/**
 * Starts Chromium and returns `{ context, page, close }`.
 *
 * Options: `flags` (extra command-line flags, e.g. '--allow-loopback-in-peer-connection'),
 * `deadlineMs` (default 120 s: after that the browser is closed and the process exits 2),
 * `onConsole(text)` (page console lines; default: dropped), `viewport` ({width, height}).
 */
export async function launch(options = {}) {
  checkExecutable(CHROMIUM);
  const chromium = await playwrightChromium();
  const profile = mkdtempSync(join(tmpdir(), 'vc-chromium-'));
  const extra = (process.env.CHROME_FLAGS || '').split(/\s+/).filter(Boolean);
  let context;
  try {
    // A persistent context is the way to choose the --user-data-dir ourselves.
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      // playwright passes its own --headless; ours are the proven set plus the caller's.
      args: [...BASE_FLAGS, ...(options.flags || []), ...extra],
      viewport: options.viewport || { width: 1000, height: 800 },
      timeout: 30_000,
      // No proxy autodetection, no downloads, nothing else of playwright's defaults matters here.
      handleSIGINT: true,
      handleSIGTERM: true,
      handleSIGHUP: true,
    });
  } catch (err) {
    rmSync(profile, { recursive: true, force: true });
    throw new HarnessError(`cannot launch ${CHROMIUM}: ${err.message}`);
  }
  const page = context.pages()[0] || (await context.newPage());
  if (options.onConsole) page.on('console', (msg) => options.onConsole(msg.text()));

  let closed = false;
  const close = async () => {
    if (closed) return;
    closed = true;
    clearTimeout(timer);
    await context.close().catch(() => {});
    rmSync(profile, { recursive: true, force: true });
  };
  const deadlineMs = options.deadlineMs ?? 120_000;
  const timer = setTimeout(async () => {
    process.stderr.write(`chromium: deadline of ${deadlineMs} ms reached, closing the browser\n`);
    await close();
    process.exit(2);
  }, deadlineMs);
  timer.unref();
  return { context, page, close };
}
