#!/usr/bin/env node
// A relay-only WebRTC call in headless Chromium through ONE TURN server; exit 0 only if it worked.
//
//   node turn-call.mjs --turn 'turn:127.0.0.1:3478?transport=udp' \
//        (--username U --credential C | --secret S) [--min-frames 30] [--messages 50]
//        [--message-bytes 1000] [--timeout-ms 20000] [--out result.json] [--flag=--some-chromium-flag]
//   (or --turn 'turns:localhost:443?transport=tcp' for TURN over TLS; use a host name, since
//    Chromium sends SNI only for names, and e.g. --flag=--ignore-certificate-errors for a test cert)
//
// Two RTCPeerConnections in one page (pages/turn-call.js), both with iceTransportPolicy
// 'relay' and only the given TURN server, send canvas video one way and echo data-channel
// messages. Prints one JSON object on stdout ({ passed, checks, call }) and a readable
// summary on stderr. Exit 0: every check passed; 1: a check failed; 2: the kit itself failed
// (no Chromium, bad arguments, deadline).
//
// Checks: both peers `connected`; on both sides the selected pair is relay/relay, the local
// relay candidate has relayProtocol == the URL's transport and url == the given URL; the
// receiver decoded >= --min-frames video frames; every data-channel message came back intact.
//
// --secret computes TURN REST credentials (coturn's use-auth-secret scheme) for a server
// started by hand: username "<now + 1 h>:turn-call", credential base64(HMAC-SHA1(secret, username)).

import { createHmac } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import { HarnessError, launch } from './lib/chromium.mjs';
import { serveDirectory } from './lib/static-server.mjs';

const HERE = dirname(fileURLToPath(import.meta.url));

function options() {
  const { values } = parseArgs({
    options: {
      turn: { type: 'string' },
      username: { type: 'string' },
      credential: { type: 'string' },
      secret: { type: 'string' },
      'min-frames': { type: 'string', default: '30' },
      messages: { type: 'string', default: '50' },
      'message-bytes': { type: 'string', default: '1000' },
      'timeout-ms': { type: 'string', default: '20000' },
      out: { type: 'string' },
      flag: { type: 'string', multiple: true, default: [] },
    },
  });
  const turn = values.turn;
  const m = /^(turns?):[^?]+\?transport=(udp|tcp)$/.exec(turn || '');
  if (!m) throw new HarnessError("--turn 'turn:HOST:PORT?transport=udp|tcp' or 'turns:HOST:PORT?transport=tcp' is required");
  // Chromium's getStats() names a TURN-over-TLS relay candidate's protocol `tls`.
  const transport = m[1] === 'turns' ? 'tls' : m[2];
  let { username, credential } = values;
  if (values.secret !== undefined) {
    username = `${Math.floor(Date.now() / 1000) + 3600}:turn-call`;
    credential = createHmac('sha1', values.secret).update(username).digest('base64');
  }
  if (!username || !credential) throw new HarnessError('give --username and --credential, or --secret');
  const number = (name) => {
    const n = Number(values[name]);
    if (!Number.isInteger(n) || n < 0) throw new HarnessError(`--${name} must be a whole number`);
    return n;
  };
  return {
    transport,
    out: values.out,
    flags: values.flag,
    call: {
      turnUrl: turn,
      username,
      credential,
      minFrames: number('min-frames'),
      messages: number('messages'),
      messageBytes: number('message-bytes'),
      timeoutMs: number('timeout-ms'),
    },
  };
}

/** The pass criteria, each as { ok, what }. */
function checks(call, transport, cfg) {
  const list = [];
  const check = (ok, what) => list.push({ ok: Boolean(ok), what });
  check(!call.error, `page ran without error${call.error ? ` (${call.error})` : ''}`);
  for (const side of ['sender', 'receiver']) {
    const state = call.connectionState?.[side];
    check(state === 'connected', `${side} connectionState is connected (${state})`);
    const pair = call.stats?.[side]?.selectedPair;
    const local = pair?.local;
    const remote = pair?.remote;
    check(
      local?.candidateType === 'relay' && remote?.candidateType === 'relay',
      `${side} selected pair is relay/relay (${local?.candidateType}/${remote?.candidateType})`,
    );
    check(local?.relayProtocol === transport, `${side} relayProtocol is ${transport} (${local?.relayProtocol})`);
    check(local?.url === cfg.turnUrl, `${side} local candidate url is ${cfg.turnUrl} (${local?.url})`);
    check(pair?.bytesReceived > 0, `${side} selected pair received bytes (${pair?.bytesReceived})`);
  }
  const frames = call.stats?.receiver?.inboundVideo?.framesDecoded ?? 0;
  check(frames >= cfg.minFrames, `receiver decoded >= ${cfg.minFrames} video frames (${frames})`);
  const data = call.data || {};
  check(
    data.echoed === cfg.messages && data.mismatched === 0,
    `all ${cfg.messages} data-channel messages echoed intact (${data.echoed} back, ${data.mismatched} mismatched)`,
  );
  return list;
}

async function main() {
  const opts = options();
  const site = await serveDirectory(join(HERE, 'pages'));
  const browser = await launch({
    flags: opts.flags,
    // Page timeouts apply per phase (connect, echo, frames); leave room for start and stats.
    deadlineMs: 3 * opts.call.timeoutMs + 30_000,
  });
  let call;
  try {
    await browser.page.goto(`${site.url}turn-call.html`, { timeout: 15_000 });
    call = await browser.page.evaluate((cfg) => window.turnCall(cfg), opts.call);
  } finally {
    await browser.close();
    await site.close();
  }
  const list = checks(call, opts.transport, opts.call);
  const passed = list.every((c) => c.ok);
  const report = { passed, transport: opts.transport, turnUrl: opts.call.turnUrl, checks: list, call };
  const json = JSON.stringify(report, null, 2);
  if (opts.out) writeFileSync(opts.out, json + '\n');
  process.stdout.write(json + '\n');
  for (const line of call.events || []) process.stderr.write(`  ${line}\n`);
  for (const c of list) process.stderr.write(`[${c.ok ? 'PASS' : 'FAIL'}] ${c.what}\n`);
  const pair = call.stats?.sender?.selectedPair;
  process.stderr.write(
    `turn-call ${passed ? 'PASS' : 'FAIL'}: ${opts.call.turnUrl} pair=${pair?.local?.candidateType}/` +
      `${pair?.remote?.candidateType} connected_ms=${call.connectedMs} ` +
      `frames=${call.stats?.receiver?.inboundVideo?.framesDecoded} echoed=${call.data?.echoed}/${opts.call.messages} ` +
      `total_ms=${call.totalMs}\n`,
  );
  return passed ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (err) => {
    const text = err instanceof HarnessError ? err.message : `harness error: ${err.stack || err}`;
    process.stderr.write(`turn-call: ${text}\n`);
    process.exit(2);
  },
);
