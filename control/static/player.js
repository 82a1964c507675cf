// The viewer side of a live session: relay ticket -> signaling WebSocket -> `connect` ->
// RTCPeerConnection (recvonly video + data channel "control") with trickle ICE, plus
// getStats() sampling and automatic recovery when the camera goes away and comes back.
// Wire format: shared/src/signaling.rs (`type`-tagged JSON).

import { API } from './api.js';

const OFFLINE_RETRY_MS = 2500;      // re-ask for a session this often while the camera is offline
const CONNECT_TIMEOUT_MS = 20000;   // offer sent but ICE never connected
const DISCONNECTED_GRACE_MS = 4000; // ICE 'disconnected' this long -> new session
const STALL_MS = 8000;              // connected but no decoded frame this long -> new session
const MAX_BACKOFF_MS = 15000;

/** Player states, shown by the page and returned by `vcStats()`. */
export const STATES = {
  connecting: 'Connecting…',
  negotiating: 'Starting video…',
  playing: 'Live',
  offline: 'Camera offline',
  stalled: 'Video stalled, reconnecting…',
  error: 'Error',
  stopped: 'Stopped',
};

function candidateInit(c) {
  const out = { candidate: c.candidate };
  if (c.sdpMid != null) out.sdpMid = c.sdpMid;
  if (c.sdpMLineIndex != null) out.sdpMLineIndex = c.sdpMLineIndex;
  if (c.usernameFragment) out.usernameFragment = c.usernameFragment;
  return out;
}

function candidateInfo(s) {
  if (!s) return null;
  return {
    candidateType: s.candidateType,
    protocol: s.protocol,
    relayProtocol: s.relayProtocol ?? null,
    address: s.address ?? s.ip ?? null,
    port: s.port,
    url: s.url ?? null,
  };
}

export class Player {
  /**
   * @param {object} o
   * @param {string} o.deviceId
   * @param {HTMLVideoElement} o.video
   * @param {boolean} o.relayOnly  iceTransportPolicy 'relay' when true
   * @param {(state: string, detail: string) => void} o.onState
   * @param {(line: string) => void} o.onLog
   * @param {(snapshot: object) => void} o.onStats  called about once a second
   * @param {(info: object) => void} o.onInfo  the camera's answer to `info`
   */
  constructor({ deviceId, video, relayOnly = false, onState, onLog, onStats, onInfo }) {
    this.deviceId = deviceId;
    this.video = video;
    this.relayOnly = relayOnly;
    this.onState = onState || (() => {});
    this.onLog = onLog || (() => {});
    this.onStats = onStats || (() => {});
    this.onInfo = onInfo || (() => {});
    this.state = 'stopped';
    this.detail = '';
    this.stopped = true;
    this.ws = null;
    this.pc = null;
    this.dc = null;
    this.sessionId = null;
    this.iceServers = [];
    this.iceExpiresAt = 0;
    this.pendingCandidates = [];
    this.timers = new Set();
    this.backoff = 1000;
    this.prev = null;       // previous stats sample, for the bitrate
    this.last = null;       // last stats snapshot
    this.lastFrames = 0;
    this.lastFrameAt = 0;
    this.rttMs = null;
    this.pingSentAt = 0;
    this.sessions = 0;
  }

  start() {
    if (!this.stopped) return;
    this.stopped = false;
    this.statsTimer = setInterval(() => this.sample().catch(() => {}), 1000);
    this.openSignaling();
  }

  stop() {
    this.stopped = true;
    clearInterval(this.statsTimer);
    this.clearTimers();
    this.endSession('viewer left');
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.close(1000);
    }
    this.setState('stopped', '');
  }

  /** Switch the ICE policy: the current session ends and a new one starts. */
  setRelayOnly(on) {
    if (this.relayOnly === on) return;
    this.relayOnly = on;
    this.log(`ICE policy -> ${on ? 'relay only' : 'all (direct allowed)'}`);
    if (this.stopped) return;
    this.endSession('ice policy changed');
    this.requestSession();
  }

  /** Drop everything and start again from a fresh ticket. */
  reconnect() {
    if (this.stopped) return;
    this.clearTimers();
    this.endSession('reconnect');
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.close(1000);
    }
    this.backoff = 1000;
    this.openSignaling();
  }

  // ---- plumbing -------------------------------------------------------------------------

  log(line) {
    this.onLog(`${new Date().toLocaleTimeString()} ${line}`);
  }

  setState(state, detail = STATES[state] || '') {
    if (this.state === state && this.detail === detail) return;
    this.state = state;
    this.detail = detail;
    this.onState(state, detail);
  }

  later(ms, fn) {
    const t = setTimeout(() => {
      this.timers.delete(t);
      if (!this.stopped) fn();
    }, ms);
    this.timers.add(t);
    return t;
  }

  clearTimers() {
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
  }

  send(msg) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify(msg));
      return true;
    }
    return false;
  }

  scheduleReconnect(why) {
    const ms = Math.min(this.backoff, MAX_BACKOFF_MS) * (0.8 + Math.random() * 0.4);
    this.backoff = Math.min(this.backoff * 2, MAX_BACKOFF_MS);
    this.log(`${why}; reconnecting in ${(ms / 1000).toFixed(1)} s`);
    this.later(ms, () => this.openSignaling());
  }

  // ---- signaling ------------------------------------------------------------------------

  async openSignaling() {
    if (this.stopped) return;
    this.setState('connecting', 'Getting a relay ticket…');
    let ticket;
    try {
      ticket = await API.ticket(this.deviceId);
    } catch (e) {
      if (this.stopped) return;
      if (e.status === 404 || e.status === 403) {
        this.setState('error', 'This camera is not yours or was deleted.');
        return;
      }
      if (e.status === 401) {
        this.setState('error', 'Your session expired. Log in again.');
        return;
      }
      this.setState('connecting', `Relay ticket failed: ${e.message}`);
      this.scheduleReconnect('ticket request failed');
      return;
    }
    if (this.stopped) return;
    const turn = ticket.turn || {};
    // Until `welcome` names its own servers, the ticket's TURN credentials are the fallback.
    this.iceServers = (turn.uris || []).length
      ? [{ urls: turn.uris, username: turn.username, credential: turn.credential }]
      : [];
    this.iceExpiresAt = Date.now() + (Number(turn.ttl) || 600) * 1000;

    let url;
    try {
      url = new URL(ticket.signaling.url, location.href);
      if (url.protocol === 'http:') url.protocol = 'ws:';
      if (url.protocol === 'https:') url.protocol = 'wss:';
      url.searchParams.set('token', ticket.signaling.token);
    } catch {
      this.setState('error', `Bad signaling URL from the server: ${ticket.signaling && ticket.signaling.url}`);
      return;
    }
    this.setState('connecting', 'Connecting to the relay…');
    this.log(`signaling ${url.origin}${url.pathname}`);
    let ws;
    try {
      ws = new WebSocket(url.toString());
    } catch (e) {
      this.scheduleReconnect(`WebSocket failed: ${e.message}`);
      return;
    }
    this.ws = ws;
    ws.onmessage = (ev) => {
      if (this.ws !== ws) return;
      let msg;
      try { msg = JSON.parse(ev.data); } catch { this.log('ignored a non-JSON signaling frame'); return; }
      this.onSignal(msg).catch((e) => this.log(`signal handling failed: ${e.message}`));
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.endSession(null);
      if (this.stopped) return;
      this.setState('connecting', 'Relay connection lost, reconnecting…');
      this.scheduleReconnect(`signaling closed (${ev.code}${ev.reason ? ' ' + ev.reason : ''})`);
    };
  }

  async onSignal(msg) {
    switch (msg.type) {
      case 'welcome': {
        this.backoff = 1000;
        if (Array.isArray(msg.ice_servers) && msg.ice_servers.length) {
          this.iceServers = msg.ice_servers.map((s) => ({
            urls: s.urls, username: s.username, credential: s.credential,
          }));
        }
        this.log(`welcome: ${this.iceServers.map((s) => [].concat(s.urls).join(' ')).join(', ') || 'no ICE servers'}`);
        this.requestSession();
        break;
      }
      case 'session':
        if (msg.device_id && msg.device_id !== this.deviceId) return;
        this.sessionId = msg.session_id;
        this.sessions += 1;
        this.log(`session ${msg.session_id}`);
        await this.startPeer(msg.session_id);
        break;
      case 'answer':
        if (!this.pc || msg.session_id !== this.sessionId) return;
        await this.pc.setRemoteDescription({ type: 'answer', sdp: msg.sdp });
        this.log('answer applied');
        for (const c of this.pendingCandidates.splice(0)) await this.addRemoteCandidate(c);
        break;
      case 'candidate':
        if (!this.pc || msg.session_id !== this.sessionId) return;
        if (this.pc.remoteDescription) await this.addRemoteCandidate(msg.candidate);
        else this.pendingCandidates.push(msg.candidate);
        break;
      case 'bye':
        if (msg.session_id && msg.session_id !== this.sessionId) return;
        this.log(`bye${msg.reason ? ': ' + msg.reason : ''}`);
        this.cameraOffline(msg.reason);
        break;
      case 'error':
        this.onError(msg);
        break;
      default:
        this.log(`ignored signaling message ${msg.type}`);
    }
  }

  onError(msg) {
    this.log(`error ${msg.code}: ${msg.message}${msg.ref ? ' (' + msg.ref + ')' : ''}`);
    switch (msg.code) {
      case 'camera_offline':
        this.cameraOffline(msg.message);
        break;
      case 'unknown_session':
        if (!msg.ref || msg.ref === this.sessionId) {
          this.endSession(null);
          this.later(1000, () => this.requestSession());
        }
        break;
      case 'rate_limited':
      case 'busy':
        this.endSession(null);
        this.setState('connecting', `Relay busy (${msg.code}), retrying…`);
        this.later(5000, () => this.requestSession());
        break;
      case 'unauthorized':
      case 'forbidden':
        // The token may have expired: a fresh ticket fixes that; a real denial shows again.
        this.setState('error', msg.message || msg.code);
        this.reconnectLater();
        break;
      default:
        break;
    }
  }

  reconnectLater() {
    this.endSession(null);
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.close(1000);
    }
    this.scheduleReconnect('relay refused');
  }

  /** Ask the relay for a session to our camera (after `welcome`, and on every retry). */
  requestSession() {
    if (this.stopped || this.pc) return;
    // Credentials from `welcome` are time limited; a long-open connection gets new ones.
    if (Date.now() > this.iceExpiresAt - 30000 && this.ws) {
      this.log('ICE credentials about to expire, fetching a new ticket');
      this.reconnect();
      return;
    }
    if (!this.send({ type: 'connect', device_id: this.deviceId })) return;
    if (this.state !== 'offline') this.setState('negotiating', 'Opening a session…');
  }

  cameraOffline(reason) {
    this.endSession(null);
    this.setState('offline', reason ? `Camera offline (${reason})` : 'Camera offline');
    this.later(OFFLINE_RETRY_MS * (0.8 + Math.random() * 0.4), () => this.requestSession());
  }

  // ---- the peer connection ---------------------------------------------------------------

  async startPeer(sessionId) {
    this.endPeer();
    const config = {
      iceServers: this.iceServers,
      iceTransportPolicy: this.relayOnly ? 'relay' : 'all',
    };
    const pc = new RTCPeerConnection(config);
    this.pc = pc;
    this.pendingCandidates = [];
    this.prev = null;
    this.lastFrames = 0;
    this.lastFrameAt = Date.now();
    pc.addTransceiver('video', { direction: 'recvonly' });
    const dc = pc.createDataChannel('control');
    this.dc = dc;
    dc.onopen = () => {
      this.log('data channel open');
      dc.send('info');
      this.pingTimer = setInterval(() => {
        if (dc.readyState === 'open') {
          this.pingSentAt = performance.now();
          dc.send('ping');
        }
      }, 2000);
    };
    dc.onmessage = (ev) => {
      if (typeof ev.data !== 'string') return;
      if (ev.data === 'pong') {
        if (this.pingSentAt) this.rttMs = performance.now() - this.pingSentAt;
        return;
      }
      try {
        this.onInfo(JSON.parse(ev.data));
      } catch {
        this.log(`camera says: ${ev.data.slice(0, 200)}`);
      }
    };
    pc.onicecandidate = (ev) => {
      if (this.pc !== pc || !ev.candidate || !ev.candidate.candidate) return;
      this.send({ type: 'candidate', session_id: sessionId, candidate: candidateInit(ev.candidate) });
    };
    pc.onicecandidateerror = (ev) => {
      this.log(`ICE candidate error ${ev.errorCode} ${ev.errorText || ''} ${ev.url || ''}`);
    };
    pc.ontrack = (ev) => {
      if (this.pc !== pc) return;
      const stream = ev.streams && ev.streams[0] ? ev.streams[0] : new MediaStream([ev.track]);
      this.video.srcObject = stream;
      this.video.play().catch(() => {});
    };
    pc.onconnectionstatechange = () => {
      if (this.pc !== pc) return;
      const st = pc.connectionState;
      this.log(`connection ${st}`);
      if (st === 'connected') {
        this.backoff = 1000;
        clearTimeout(this.disconnectTimer);
      } else if (st === 'disconnected') {
        clearTimeout(this.disconnectTimer);
        this.disconnectTimer = this.later(DISCONNECTED_GRACE_MS, () => {
          if (this.pc === pc && pc.connectionState !== 'connected') this.restartSession('ICE disconnected');
        });
      } else if (st === 'failed') {
        this.restartSession('ICE failed');
      }
    };
    this.connectTimer = this.later(CONNECT_TIMEOUT_MS, () => {
      if (this.pc === pc && pc.connectionState !== 'connected') this.restartSession('no connection after 20 s');
    });

    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    if (this.pc !== pc) return;
    this.send({ type: 'offer', session_id: sessionId, sdp: pc.localDescription.sdp });
    this.log(`offer sent (${this.relayOnly ? 'relay only' : 'all candidates'})`);
    this.setState('negotiating');
  }

  async addRemoteCandidate(c) {
    if (!this.pc || !c || !c.candidate) return;
    try {
      await this.pc.addIceCandidate(c);
    } catch (e) {
      this.log(`bad remote candidate: ${e.message}`);
    }
  }

  restartSession(why) {
    this.log(`${why}: new session`);
    this.endSession('restart');
    this.setState('connecting', `${why}, reconnecting…`);
    this.later(1000, () => this.requestSession());
  }

  /** Close the peer connection; tell the camera (via the relay) when `reason` is given. */
  endSession(reason) {
    if (reason && this.sessionId && this.pc) {
      this.send({ type: 'bye', session_id: this.sessionId, reason });
    }
    this.endPeer();
    this.sessionId = null;
  }

  endPeer() {
    clearInterval(this.pingTimer);
    clearTimeout(this.disconnectTimer);
    if (this.connectTimer) { clearTimeout(this.connectTimer); this.timers.delete(this.connectTimer); }
    if (this.dc) { try { this.dc.close(); } catch { /* already closed */ } }
    if (this.pc) { try { this.pc.close(); } catch { /* already closed */ } }
    this.dc = null;
    this.pc = null;
    this.rttMs = null;
    this.pendingCandidates = [];
    if (this.video) this.video.srcObject = null;
  }

  // ---- stats -----------------------------------------------------------------------------

  /** A fresh getStats() snapshot: selected pair, inbound video, bitrate. */
  async stats() {
    const pc = this.pc;
    const snap = {
      state: this.state,
      detail: this.detail,
      relayOnly: this.relayOnly,
      sessionId: this.sessionId,
      sessions: this.sessions,
      connectionState: pc ? pc.connectionState : 'closed',
      iceConnectionState: pc ? pc.iceConnectionState : 'closed',
      local: null,
      remote: null,
      pair: null,
      framesDecoded: 0,
      framesPerSecond: null,
      frameWidth: null,
      frameHeight: null,
      bytesReceived: 0,
      bitrateKbps: null,
      rttMs: this.rttMs,
    };
    if (!pc) return snap;
    const report = await pc.getStats();
    const byId = new Map();
    report.forEach((s) => byId.set(s.id, s));
    let pair = null;
    report.forEach((s) => {
      if (s.type === 'transport' && s.selectedCandidatePairId) pair = byId.get(s.selectedCandidatePairId) || pair;
    });
    if (!pair) {
      report.forEach((s) => {
        if (s.type === 'candidate-pair' && (s.selected || (s.nominated && s.state === 'succeeded'))) pair = s;
      });
    }
    if (pair) {
      snap.local = candidateInfo(byId.get(pair.localCandidateId));
      snap.remote = candidateInfo(byId.get(pair.remoteCandidateId));
      snap.pair = {
        state: pair.state,
        bytesSent: pair.bytesSent,
        bytesReceived: pair.bytesReceived,
        currentRoundTripTime: pair.currentRoundTripTime ?? null,
      };
    }
    report.forEach((s) => {
      if (s.type === 'inbound-rtp' && (s.kind === 'video' || s.mediaType === 'video')) {
        snap.framesDecoded = s.framesDecoded || 0;
        snap.framesPerSecond = s.framesPerSecond ?? null;
        snap.frameWidth = s.frameWidth ?? null;
        snap.frameHeight = s.frameHeight ?? null;
        snap.bytesReceived = s.bytesReceived || 0;
        snap.codec = s.codecId && byId.get(s.codecId) ? byId.get(s.codecId).mimeType : null;
        snap.timestamp = s.timestamp;
      }
    });
    return snap;
  }

  async sample() {
    const pc = this.pc;
    const snap = await this.stats();
    if (pc && this.pc === pc && snap.timestamp) {
      if (this.prev && snap.timestamp > this.prev.timestamp) {
        const bits = (snap.bytesReceived - this.prev.bytesReceived) * 8;
        snap.bitrateKbps = Math.max(0, bits / (snap.timestamp - this.prev.timestamp));
      }
      this.prev = { timestamp: snap.timestamp, bytesReceived: snap.bytesReceived };
      const now = Date.now();
      if (snap.framesDecoded > this.lastFrames) {
        this.lastFrames = snap.framesDecoded;
        this.lastFrameAt = now;
        if (this.state !== 'playing') this.setState('playing', 'Live');
      } else if (this.state === 'playing' && now - this.lastFrameAt > 2500) {
        this.setState('stalled', 'No video for a moment, waiting…');
      } else if (this.state === 'stalled' && now - this.lastFrameAt > STALL_MS) {
        this.restartSession('video stalled');
      }
    }
    this.last = snap;
    this.onStats(snap);
  }
}
