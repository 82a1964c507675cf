#!/usr/bin/env python3
"""Writes the seed corpora, fuzz/corpus/<target>/: `python3 fuzz/seeds.py`.
Small, meaningful inputs each target's decoder accepts, so fuzzing starts past the framing:
STUN Binding/Allocate (with MESSAGE-INTEGRITY and FINGERPRINT), ChannelData, the op
sequences turn_authed signs itself, and one signaling JSON message of each type."""
import hashlib, hmac, json, os, struct, zlib

MAGIC = 0x2112A442
HERE = os.path.dirname(os.path.abspath(__file__))

def attr(typ, value):
    return struct.pack("!HH", typ, len(value)) + value + b"\0" * (-len(value) % 4)

def stun(msg_type, tid, attrs, key=None, fingerprint=False):
    body = b"".join(attrs)
    def header(extra):
        return struct.pack("!HHI", msg_type, len(body) + extra, MAGIC) + tid
    if key is not None:
        mac = hmac.new(key, header(24) + body, hashlib.sha1).digest()
        body += attr(0x0008, mac)
    if fingerprint:
        crc = (zlib.crc32(header(8) + body) ^ 0x5354554E) & 0xFFFFFFFF
        body += attr(0x8028, struct.pack("!I", crc))
    return header(0) + body

def xor_addr(ip, port):
    a = struct.unpack("!I", bytes(ip))[0] ^ MAGIC
    return struct.pack("!BBHI", 0, 1, port ^ (MAGIC >> 16), a)

def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())

TID = bytes(range(12))
KEY = hashlib.md5(b"u:visionconnect:p").digest()
udp = attr(0x0019, bytes([17, 0, 0, 0]))
raw = {
    "binding": stun(0x0001, TID, [], fingerprint=True),
    "allocate_unauth": stun(0x0003, TID, [udp]),
    "allocate_signed": stun(0x0003, TID, [udp, attr(0x0006, b"u"), attr(0x0014, b"visionconnect"),
                                          attr(0x0015, b"nonce-0123456789")], KEY, True),
    "refresh_signed": stun(0x0004, TID, [attr(0x000D, struct.pack("!I", 0)), attr(0x0006, b"u")], KEY, True),
    "channel_data": struct.pack("!HH", 0x4000, 4) + b"ping",
    "send_indication": stun(0x0016, TID, [attr(0x0012, xor_addr([127, 0, 0, 1], 6000)),
                                          attr(0x0013, b"hello")]),
}
for name, data in raw.items():
    write("stun_decode", name, data)
    write("turn_server", name, data)

# turn_authed: byte 0 picks the transport (bit 7: TCP), then ops [op, len, body]; op%8 0-3
# are Allocate/Refresh/CreatePermission/ChannelBind with body = [type_hi, type_lo, vlen, value]
# attributes (the target signs them), 4 raw client bytes, 5 peer data, 6 time passes.
def a(typ, value):
    return struct.pack("!HB", typ, len(value)) + value
def op(code, body):
    return bytes([code, len(body)]) + body
peer = a(0x0012, xor_addr([8, 8, 8, 8], 6000))
chan = a(0x000C, bytes([0x40, 0, 0, 0]))
write("turn_authed", "permission_channel_data", b"\0" + op(2, peer) + op(3, chan + peer)
      + op(4, struct.pack("!HH", 0x4000, 4) + b"ping") + op(5, b"pong"))
write("turn_authed", "send_and_refresh_delete", b"\0" + op(2, peer)
      + op(4, stun(0x0016, TID, [attr(0x0012, xor_addr([8, 8, 8, 8], 6000)), attr(0x0013, b"hi")]))
      + op(1, a(0x000D, struct.pack("!I", 0))))
write("turn_authed", "tcp_expiry", b"\x80" + op(2, peer) + op(6, b"\xff") + op(1, a(0x000D, struct.pack("!I", 600))))

sid = "6f1c2d3e-4b5a-4c6d-8e7f-0123456789ab"
dev = "00000000-0000-0000-0000-000000001234"
for msg in [
    {"type": "auth", "token": "t.o.k"},
    {"type": "connect", "device_id": dev},
    {"type": "offer", "session_id": sid, "sdp": "v=0\r\n"},
    {"type": "answer", "session_id": sid, "sdp": "v=0\r\n"},
    {"type": "candidate", "session_id": sid, "candidate": {"candidate": "candidate:1 1 udp 1 1.2.3.4 5 typ host", "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "uf"}},
    {"type": "bye", "session_id": sid, "reason": "done"},
]:
    write("signaling_json", msg["type"], json.dumps(msg))
