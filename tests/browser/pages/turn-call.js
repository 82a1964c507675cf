// A relay-only WebRTC call between two RTCPeerConnections in this page.
//
// `window.turnCall(cfg)` connects a "sender" (canvas video + data channel) to a "receiver"
// (decodes the video, echoes every data-channel message) through exactly one TURN server,
// with iceTransportPolicy 'relay', then returns plain facts from getStats(). It never
// decides pass/fail: turn-call.mjs does that from the returned object.
//
// cfg: { turnUrl, username, credential, minFrames, messages, messageBytes, timeoutMs }
'use strict';

const started = performance.now();
const events = [];

function note(...parts) {
  const line = `${((performance.now() - started) / 1000).toFixed(3)} ${parts
    .map((p) => (typeof p === 'string' ? p : JSON.stringify(p)))
    .join(' ')}`;
  events.push(line);
  document.getElementById('events').textContent += line + '\n';
}

const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `check` every 50 ms until it returns a truthy value; throws after `ms`. */
async function until(what, ms, check) {
  const end = performance.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (performance.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await pause(50);
  }
}

/** Draws a moving test pattern with a frame counter; returns a stop function. */
function animate(canvas) {
  const g = canvas.getContext('2d');
  let frame = 0;
  const timer = setInterval(() => {
    frame += 1;
    const { width: w, height: h } = canvas;
    g.fillStyle = `hsl(${(frame * 5) % 360} 70% 40%)`;
    g.fillRect(0, 0, w, h);
    g.fillStyle = '#fff';
    g.fillRect((frame * 6) % w, h / 2 - 20, 40, 40);
    g.font = 'bold 28px monospace';
    g.fillText(`#${frame}`, 12, 36);
  }, 1000 / 30);
  return () => clearInterval(timer);
}

/** The facts one peer connection's getStats() holds about the call. */
// The stats of the selected pair, once its counters show traffic: when ICE switches to a
// newer relay candidate just before the call ends, the new pair's first snapshot reads 0
// bytes for a moment (getStats results are cached briefly). Up to 2 s, then whatever it says.
async function settledFacts(pc) {
  let f = await facts(pc);
  for (let i = 0; i < 10 && !(f.selectedPair?.bytesReceived > 0); i++) {
    await new Promise((r) => setTimeout(r, 200));
    f = await facts(pc);
  }
  return f;
}

async function facts(pc) {
  const stats = new Map();
  (await pc.getStats()).forEach((s) => stats.set(s.id, s));
  const out = { selectedPair: null, inboundVideo: null, outboundVideo: null, localCandidates: [] };
  const candidate = (c) =>
    c && {
      candidateType: c.candidateType,
      protocol: c.protocol,
      relayProtocol: c.relayProtocol,
      address: c.address,
      port: c.port,
      url: c.url,
    };
  for (const s of stats.values()) {
    if (s.type === 'transport' && s.selectedCandidatePairId) {
      const pair = stats.get(s.selectedCandidatePairId);
      if (pair) {
        out.selectedPair = {
          state: pair.state,
          nominated: pair.nominated,
          bytesSent: pair.bytesSent,
          bytesReceived: pair.bytesReceived,
          currentRoundTripTime: pair.currentRoundTripTime,
          local: candidate(stats.get(pair.localCandidateId)),
          remote: candidate(stats.get(pair.remoteCandidateId)),
        };
      }
    } else if (s.type === 'inbound-rtp' && s.kind === 'video') {
      out.inboundVideo = {
        framesDecoded: s.framesDecoded ?? 0,
        framesReceived: s.framesReceived,
        bytesReceived: s.bytesReceived,
        packetsReceived: s.packetsReceived,
        packetsLost: s.packetsLost,
        frameWidth: s.frameWidth,
        frameHeight: s.frameHeight,
        codec: stats.get(s.codecId)?.mimeType ?? null,
      };
    } else if (s.type === 'outbound-rtp' && s.kind === 'video') {
      out.outboundVideo = { framesEncoded: s.framesEncoded, bytesSent: s.bytesSent, packetsSent: s.packetsSent };
    } else if (s.type === 'local-candidate') {
      out.localCandidates.push(candidate(s));
    }
  }
  return out;
}

window.turnCall = async function turnCall(cfg) {
  const callStart = performance.now();
  const config = {
    iceServers: [{ urls: [cfg.turnUrl], username: cfg.username, credential: cfg.credential }],
    iceTransportPolicy: 'relay',
  };
  const sender = new RTCPeerConnection(config);
  const receiver = new RTCPeerConnection(config);
  const peers = { sender, receiver };
  const result = {
    error: null,
    candidateErrors: [],
    gathered: { sender: 0, receiver: 0 },
    connectedMs: null,
    data: { sent: cfg.messages, echoed: 0, mismatched: 0 },
  };
  const stopDrawing = animate(document.getElementById('pattern'));
  try {
    for (const [name, pc] of Object.entries(peers)) {
      const other = pc === sender ? receiver : sender;
      pc.addEventListener('icecandidate', ({ candidate }) => {
        if (!candidate) return note(name, 'gathering done');
        result.gathered[name] += 1;
        note(name, 'candidate', candidate.candidate);
        other.addIceCandidate(candidate).catch((e) => note(name, 'addIceCandidate failed', String(e)));
      });
      pc.addEventListener('icecandidateerror', (e) => {
        const err = { peer: name, url: e.url, errorCode: e.errorCode, errorText: e.errorText, address: e.address, port: e.port };
        result.candidateErrors.push(err);
        note(name, 'icecandidateerror', err);
      });
      pc.addEventListener('connectionstatechange', () => note(name, 'connection', pc.connectionState));
      pc.addEventListener('iceconnectionstatechange', () => note(name, 'ice', pc.iceConnectionState));
    }

    // Video: the canvas stream, sent only (the receiver sends nothing back but ICE/RTCP).
    const stream = document.getElementById('pattern').captureStream(30);
    sender.addTransceiver(stream.getVideoTracks()[0], { direction: 'sendonly', streams: [stream] });
    receiver.addEventListener('track', ({ track }) => {
      note('receiver got', track.kind, 'track');
      const video = document.getElementById('received');
      video.srcObject = new MediaStream([track]);
      video.play().catch((e) => note('video.play failed', String(e)));
    });

    // Data: the sender's channel; the receiver echoes every message verbatim.
    const channel = sender.createDataChannel('echo', { ordered: true });
    const expected = [];
    channel.addEventListener('message', ({ data }) => {
      if (data !== expected[result.data.echoed]) result.data.mismatched += 1;
      result.data.echoed += 1;
    });
    receiver.addEventListener('datachannel', ({ channel: incoming }) => {
      incoming.addEventListener('message', ({ data }) => incoming.send(data));
    });

    await sender.setLocalDescription();
    await receiver.setRemoteDescription(sender.localDescription);
    await receiver.setLocalDescription();
    await sender.setRemoteDescription(receiver.localDescription);
    note('offer/answer done');

    const failed = (pc) => pc.connectionState === 'failed' || pc.connectionState === 'closed';
    await until('both peers connected', cfg.timeoutMs, () => {
      if (failed(sender) || failed(receiver)) {
        throw new Error(`connection ${sender.connectionState}/${receiver.connectionState}`);
      }
      // Gathering finished without a single relay candidate: the server refused or never answered.
      const gatheredNothing = Object.entries(peers).some(
        ([name, pc]) => pc.iceGatheringState === 'complete' && result.gathered[name] === 0,
      );
      if (gatheredNothing) throw new Error('ICE gathering completed without a relay candidate');
      return sender.connectionState === 'connected' && receiver.connectionState === 'connected';
    });
    result.connectedMs = Math.round(performance.now() - callStart);
    note('connected');

    await until('data channel open', cfg.timeoutMs, () => channel.readyState === 'open');
    const filler = 'v'.repeat(Math.max(0, cfg.messageBytes - 16));
    for (let i = 0; i < cfg.messages; i += 1) {
      const message = `${String(i).padStart(6, '0')}:${filler}`;
      expected.push(message);
      channel.send(message);
    }
    await until(`${cfg.messages} echoes`, cfg.timeoutMs, () => result.data.echoed >= cfg.messages);
    note('echoes back', result.data.echoed);

    await until(`${cfg.minFrames} decoded frames`, cfg.timeoutMs, async () => {
      const video = (await facts(receiver)).inboundVideo;
      return video && video.framesDecoded >= cfg.minFrames;
    });
    note('frames decoded');
  } catch (e) {
    result.error = String(e && e.message ? e.message : e);
    note('error', result.error);
  }
  result.connectionState = { sender: sender.connectionState, receiver: receiver.connectionState };
  result.stats = { sender: await settledFacts(sender), receiver: await settledFacts(receiver) };
  stopDrawing();
  sender.close();
  receiver.close();
  result.totalMs = Math.round(performance.now() - callStart);
  result.events = events;
  return result;
};
