#!/usr/bin/env python3
"""Writes the hand-made seed inputs of each fuzz target into fuzz/corpus/<target>/seed-*.

Each target reads a few parameter bytes first (see its source); the rest is the payload. Run from
anywhere: `python3 fuzz/seeds.py`. The fuzzer's own finds are added to the same folders after a
run, minimised with `cargo fuzz cmin`.
"""
import hashlib
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def put(target, payload):
    folder = os.path.join(ROOT, target)
    os.makedirs(folder, exist_ok=True)
    name = "seed-" + hashlib.sha1(payload).hexdigest()[:16]
    with open(os.path.join(folder, name), "wb") as f:
        f.write(payload)


def req_params(max_head=4000, max_headers=100, max_body=1 << 20, step=1):
    return struct.pack("<HBIB", (max_head - 16) % 4096, max_headers - 1, max_body, step - 1)


REQUESTS = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET http://example.com:8080?q HTTP/1.1\r\nHost: other\r\n\r\n",
    b"GET HTTPS://Example.com/x HTTP/1.1\r\nHost: example.com\r\n\r\n",
    b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
    b"GET / HTTP/1.1\nHost: a\n\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nCache-Control: max-age=0, no-cache\r\nPragma: no-cache\r\n\r\n",
    # Request smuggling shapes (RFC 9112 section 11.2): each must be refused or read one way only.
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length:  5 \r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5,5\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity, chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked \r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\tchunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \r\n\r\n",
    b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nX-Folded: a\r\n b\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent_Length: 1000\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer_Encoding: chunked\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX\x01: b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET http://a/ HTTP/1.1\r\nHost: b\r\n\r\n",
    b"GET http://user@a/ HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET /admin HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
    b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nExpect: tea\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4, 10.0.0.1\r\nVia: 1.1 x\r\n\r\n",
]

for raw in REQUESTS:
    put("request_head", req_params() + raw)
put("request_head", req_params(max_head=64, max_headers=2, max_body=4, step=3) + REQUESTS[1])
put("request_head", req_params(max_head=40, max_headers=1, max_body=4, step=16) + REQUESTS[7])

RESPONSES = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n\r\nuntil close",
    b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\n",
    b"HTTP/1.1 200 \r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 2000 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
    b"HTTP/1.1 200 OK\r\nX: a\r\n folded\r\n\r\n",
    b"garbage\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nETag: W/\"x\"\r\nVary: Accept\r\n\r\n",
]
for i, raw in enumerate(RESPONSES):
    put("response_head", bytes([(i % 16) << 4 | (i & 1 if i < 4 else 0)]) + raw)


def body_params(step=1, mode=0, limit=1 << 20):
    return struct.pack("<BBQ", step, mode, limit)


CHUNKED = [
    b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nX-Trailer: 1\r\n\r\nGET / HTTP/1.1\r\n\r\n",
    b"5\r\nhello\r\n0\r\n\r\n",
    b"0\r\n\r\n",
    b"A\r\n0123456789\r\n0\r\n\r\n",
    b"a; name=\"va;lue\"\r\n0123456789\r\n0\r\n\r\n",
    b"0000000000000005\r\nhello\r\n0\r\n\r\n",
    b"+5\r\nhello\r\n0\r\n\r\n",
    b"0x5\r\nhello\r\n0\r\n\r\n",
    b"fffffffffffffffff\r\n",
    b"ffffffffffffffff\r\n",
    b"5\r\nhelloXX0\r\n\r\n",
    b"5\nhello\n0\n\n",
    b"5\r\nhello\n0\r\n\r\n",
    b"5 \r\nhello\r\n0\r\n\r\n",
    b"5\r\nhello\r\n0\r\nContent-Length: 10\r\nHost: evil\r\n\r\n",
    b"5\r\nhel",
    b"2\r\nabc\r\n0\r\n\r\n",
    b"5;" + b"e" * 5000 + b"\r\nhello\r\n0\r\n\r\n",
]
for i, raw in enumerate(CHUNKED):
    put("chunked_body", body_params(step=[1, 3, 7, 64, 200, 255][i % 6], mode=0) + raw)
put("chunked_body", body_params(step=2, mode=1) + b"any body at all, re-framed as chunks")
put("chunked_body", body_params(step=9, mode=2, limit=10) + b"until the peer closes")
put("chunked_body", body_params(step=5, mode=0, limit=4) + CHUNKED[1])


def cache_params(status=200, ttl=600, rt=0, delay=1, age_ms=10_000):
    return struct.pack("<HIIHQ", status, ttl, rt, delay, age_ms)


CACHE = [
    (200, b"Cache-Control: public, max-age=60, no-cache=\"Set-Cookie, X\", s-maxage=\"30\", stale-if-error=x\nETag: \"v1\"\n>If-None-Match: \"v0\", W/\"v1\""),
    (200, b"Cache-Control: max-age=60, stale-while-revalidate=30, stale-if-error=100\nETag: W/\"a\"\nDate: Tue, 14 Nov 2023 22:13:20 GMT"),
    (200, b"Cache-Control: MAX-AGE=99999999999999999999999\nLast-Modified: Tue, 14 Nov 2023 22:13:20 GMT\n>If-Modified-Since: Tue, 14 Nov 2023 22:13:20 GMT"),
    (200, b"Date: Tue, 14 Nov 2023 22:13:20 GMT\nExpires: Tue, 14 Nov 2023 22:14:20 GMT\nAge: 5\nETag: \"x\""),
    (200, b"Expires: 0\nLast-Modified: Sunday, 06-Nov-94 08:49:37 GMT"),
    (200, b"Date: Sun Nov  6 08:49:37 1994\nCache-Control: max-stale, min-fresh=5"),
    (200, b"Cache-Control: no-store\nCache-Control: max-age=5"),
    (200, b"Cache-Control: private, max-age=60\nSet-Cookie: a=b"),
    (200, b"Cache-Control: public, max-age=60\nSet-Cookie: a=b\nVary: Accept, *"),
    (200, b"Cache-Control: s-maxage=60, must-revalidate, proxy-revalidate\n>Authorization: Bearer x\n>Cache-Control: max-age=0"),
    (206, b"Cache-Control: max-age=60\nContent-Range: bytes 0-1/2"),
    (304, b"Cache-Control: max-age=60\nETag: \"a,b\""),
    (500, b"Cache-Control: max-age=5, stale-if-error=4294967296\n>Cache-Control: no-cache, max-stale=10"),
    (404, b"Cache-Control: public\n>Pragma: no-cache"),
]
for status, raw in CACHE:
    put("cache_policy", cache_params(status=status) + raw)


with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "parser.ini.example"), "rb") as f:
    put("ini_config", f.read())
INI = [
    b"[DEFAULT]\nip_server1 = 127.0.0.1:9001\n\n[route.users]\nprefix = /users/\nservers = 127.0.0.1:5100\n\n"
    b"[route.games]\nprefix = /games/\nservers = 127.0.0.1:5101, 127.0.0.1:5102, [::1]:5103\nauth = request\n"
    b"auth_url = http://127.0.0.1:5100/auth\nstrip_prefix = false\nbalance = least_conn\nauth_cache_secs = 1500ms\n"
    b"rate_limit = 30/m\nrate_burst = 5\nhealth_path = /status\nexpose_auth = yes\n",
    b"rate_limit = 0.5/s\nrate_burst = 5\ndeny = 10.0.0.0/8, 203.0.113.7, 2001:db8::/32\nallow = ::/0, 0.0.0.0/0\n"
    b"trusted_proxies = 127.0.0.1, ::ffff:10.0.0.0/104\n",
    b"ttl = 1h\nmax_body_bytes = 1g\ncache_max_bytes = 64m\ncache_max_object_bytes = 2m\nbuffer_size = 16k\n"
    b"max_header_bytes = 1m\nmax_headers = 1000\nheader_timeout = 500ms\njwt_secret = s3cr3t # not a comment\n",
    b"\xef\xbb\xbfport = 8081\r\napi_port = 5001\r\nmetrics_bind = [::1]:9100\r\ndatabase =  \"C:\\data\\pibl.db\" \r\n"
    b"access_log_file = - \r\nadmins = a@b.c, ,d@e.f\r\nlog_level = TRACE\r\naccess_log_format = json\r\n",
    b"ip_server2 = [::1]\nip_server10 = 10.0.0.1:8080\nip_server1 = ::1\nhealth_path = /health?x=1\n",
    b"prot = 1\n",
    b"[DEFAULT]\nport = 1\nport = 2\n",
    b"[route.a]\nprefix = /a/\nservers = 127.0.0.1:1\n[route.b]\nprefix = /a/\nservers = 127.0.0.1:2\n",
    b"value = \"unclosed\nport = 1\n",
    b"  # indented comment\n",
    b"key_continues = a\\\nport = 5\n",
    b"[route.x]\nprefix = /x\nservers = localhost:80\n",
    b"cache_max_bytes = 1k\ncache_max_object_bytes = 2k\n",
]
for raw in INI:
    put("ini_config", raw)


def ip_param(kind, raw):
    return bytes([kind]) + (raw + bytes(16))[:16]


V4_LOOP = bytes([127, 0, 0, 1])
V4_TEN = bytes([10, 1, 2, 3])
CIDR = [
    (ip_param(0, V4_LOOP), ip_param(0, V4_TEN), b"127.0.0.1, 10.0.0.0/8\n1.2.3.4, 10.0.0.7\n"),
    (ip_param(2, V4_TEN), ip_param(1, bytes(15) + b"\x01"), b"10.0.0.0/8, ::1/128\n203.0.113.9\n198.51.100.1, 10.9.9.9"),
    (ip_param(1, bytes(15) + b"\x01"), ip_param(0, V4_TEN), b"::/0\n1.1.1.1, not-an-ip, 2.2.2.2\n"),
    (ip_param(0, V4_TEN), ip_param(0, V4_LOOP), b"0.0.0.0/0\n"),
    (ip_param(1, b"\x20\x01\x0d\xb8" + bytes(12)), ip_param(0, V4_TEN), b"2001:db8::/32, 192.168.0.0/16\n[2001:db8::1], 2001:db8::2\n"),
    (ip_param(0, V4_LOOP), ip_param(0, V4_LOOP), b"127.0.0.1/33\n"),
    (ip_param(0, V4_LOOP), ip_param(0, V4_LOOP), b"::ffff:127.0.0.0/104\n8.8.8.8\n"),
]
for peer, probe, raw in CIDR:
    put("cidr_gateway", peer + probe + raw)


API = [
    (0, b'{"email":"your@email.com","password":"yourpassword","extra":1}'),
    (0, b'{"email":"a.b+c_d-e@x-y.co.uk","password":"\\u00f1\\u00f1\\u00f1\\u00f1\\u00f1\\u00f1"}'),
    (0, b'{}'),
    (0, b'{"email":"x","password":"12345"}'),
    (0, b'{"email":1,"password":"123456"}'),
    (0, b'[1]'),
    (0, b'{nope'),
    (0, b'{"email":"a@b.c","password":"123456","email":"evil@x.y"}'),
    (1, b'{"host":"10.0.0.1","port":8080,"statuspath":"status"}'),
    (1, b'{"host":"[::1]","port":0,"statuspath":"/health?x=1"}'),
    (1, b'{"host":"h","port":80.0,"statuspath":"/"}'),
    (1, b'{"host":"h","port":8e1,"statuspath":"/"}'),
    (1, b'{"host":"h","port":-0.0,"statuspath":"/"}'),
    (1, b'{"host":"h","port":65536,"statuspath":"/"}'),
    (1, b'{"host":"http://h","port":80,"statuspath":"/ x"}'),
    (1, b'{"host":"","port":"80","statuspath":5}'),
    (1, b'{"host":"a_b.example","port":1e400,"statuspath":"http://x/"}'),
    (2, b"x@y.-"),
    (2, b"a@b_c.d"),
    (2, b"\xc3\xb1@b.c"),
    (3, b"my-app-2"),
    (3, b"-a"),
    (3, b"Hello"),
]
for mode, raw in API:
    put("api_json", bytes([mode]) + raw)


NOW = struct.pack("<I", 1_700_000_000)
SEED_JWT = (b"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpZGVudGl0eSI6ImFuZ2VsQGFuZ2VsLmNvbSIsImlhdCI6MTQ2MzkxNTE1MCwib"
            b"mJmIjoxNDYzOTE1MTUwLCJleHAiOjE0NjM5MTU0NTB9.5NXV8LxNFUUU1MbPxRa-tLsGU-i23G0BviIM7vX_ed4")
JWT = [
    bytes([0]) + NOW + b"JWT " + SEED_JWT,
    bytes([0]) + NOW + b"  bearer   abc.def.ghi  ",
    bytes([0]) + NOW + b"Basic dXNlcjpwYXNz",
    bytes([0]) + NOW + b"Bearer\tabc",
    bytes([0]) + NOW + b"Bearer ",
    bytes([1]) + NOW + SEED_JWT,
    bytes([1]) + NOW + b"eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJpZGVudGl0eSI6ImEiLCJpYXQiOjEsIm5iZiI6MSwiZXhwIjo5OTk5OTk5OTk5fQ.",
    bytes([1]) + NOW + b"...",
]
for op in range(6):
    JWT.append(bytes([2]) + NOW + bytes([op, 7, 0, 65]) + b"your@email.com")
for raw in JWT:
    put("jwt_auth", raw)


def framing_params(mode=0, limit=1 << 20, length=0, cuts=()):
    return struct.pack("<BQIB", mode, limit, length, len(cuts)) + b"".join(struct.pack("<H", c) for c in cuts)


for i, raw in enumerate(CHUNKED):
    cuts = [(1,), (2, 5, 9), (3, 4, 5, 6, 7, 8), (), (10, 20), (4094, 4096, 4098)][i % 6]
    put("framing", framing_params(mode=0, cuts=cuts) + raw)
put("framing", framing_params(mode=0, cuts=(3,)) + b"5;" + b"e" * 4092 + b"\r\nhello\r\n0\r\n\r\n")
put("framing", framing_params(mode=0, cuts=(4096,)) + b"0\r\nX: " + b"t" * 4090 + b"\r\n\r\n")
put("framing", framing_params(mode=0, limit=4, cuts=(1, 2)) + CHUNKED[1])
put("framing", framing_params(mode=1, length=6, cuts=(2, 5)) + b"hello!extra")
put("framing", framing_params(mode=1, length=10, limit=4) + b"too long for the limit")
put("framing", framing_params(mode=1, length=10, cuts=(3,)) + b"abc")
put("framing", framing_params(mode=2, cuts=(4, 8)) + b"until the peer closes")
put("framing", framing_params(mode=2, limit=10, cuts=(9, 11)) + b"until the peer closes")
put("framing", framing_params(mode=0, cuts=(8000,)) + b"0\r\n" + b"X-T: " + b"t" * 4000 + b"\r\n" + (b"X-T: " + b"t" * 4000 + b"\r\n") * 4 + b"\r\n")
