// Table tests for the pure WHIP/WHEP signalling helpers in signal.js.
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  HttpError,
  authHeaders,
  backoffDelay,
  candidateFragment,
  checkResponse,
  iceServersFromLinks,
  linkFor,
  parseLinkHeader,
  retryAfterMs,
  Timers,
} from "../signal.js";

test("parseLinkHeader: several links, quoted commas, semicolons and escaped quotes", () => {
  const header =
    '<stun:stun.example:3478>; rel="ice-server", ' +
    '<turn:turn.example:3478?transport=udp>; rel="ice-server"; username="a,b;c"; ' +
    'credential="p\\"w\\\\d", ' +
    "<https://x.example/sse>;rel=urn:ietf:params:whep:ext:core:server-sent-events;events=\"active,layers\"";
  assert.deepEqual(parseLinkHeader(header), [
    { url: "stun:stun.example:3478", params: { rel: "ice-server" } },
    {
      url: "turn:turn.example:3478?transport=udp",
      params: { rel: "ice-server", username: "a,b;c", credential: 'p"w\\d' },
    },
    {
      url: "https://x.example/sse",
      params: { rel: "urn:ietf:params:whep:ext:core:server-sent-events", events: "active,layers" },
    },
  ]);
});

test("parseLinkHeader: empty, case-insensitive names, first parameter wins, bare params", () => {
  assert.deepEqual(parseLinkHeader(""), []);
  assert.deepEqual(parseLinkHeader(null), []);
  assert.deepEqual(parseLinkHeader('<a>; REL="x"; rel="y"; flag'), [
    { url: "a", params: { rel: "x", flag: "" } },
  ]);
  assert.deepEqual(parseLinkHeader("<a>, , <b>"), [
    { url: "a", params: {} },
    { url: "b", params: {} },
  ]);
});

test("parseLinkHeader: malformed input throws SyntaxError", () => {
  for (const bad of ["a", "<a", '<a>; rel="x', "<a> rel=x", "<a>; =x"]) {
    assert.throws(() => parseLinkHeader(bad), SyntaxError, bad);
  }
});

test("iceServersFromLinks keeps ice-server links with their credentials", () => {
  const links = parseLinkHeader(
    '<stun:s:3478>; rel="ice-server", <turns:t:443>; rel="ice-server"; username="u"; ' +
      'credential="c"; credential-type="password", <https://x/layer>; rel="urn:ietf:params:whep:ext:core:layer"',
  );
  assert.deepEqual(iceServersFromLinks(links), [
    { urls: "stun:s:3478" },
    { urls: "turns:t:443", username: "u", credential: "c" },
  ]);
  assert.deepEqual(iceServersFromLinks([]), []);
});

test("linkFor resolves against the base and matches one of several rels", () => {
  const links = parseLinkHeader('</a/layer>; rel="next urn:x", <b>; rel="urn:y"');
  assert.equal(linkFor(links, "urn:x", "https://h.example/whep/cam"), "https://h.example/a/layer");
  assert.equal(linkFor(links, "urn:y", "https://h.example/whep/cam"), "https://h.example/whep/b");
  assert.equal(linkFor(links, "urn:z", "https://h.example/"), null);
});

test("backoffDelay: equal jitter between ceiling/2 and ceiling, capped", () => {
  const lo = () => 0;
  const hi = () => 0.999999;
  for (const [attempt, ceiling] of [[0, 500], [1, 1000], [2, 2000], [4, 8000], [5, 15000], [30, 15000]]) {
    assert.equal(backoffDelay(attempt, { random: lo }), ceiling / 2, `attempt ${attempt} low`);
    const high = backoffDelay(attempt, { random: hi });
    assert.ok(high < ceiling && high > ceiling * 0.999, `attempt ${attempt} high ${high}`);
  }
  assert.equal(backoffDelay(-3, { random: lo }), 250);
  assert.equal(backoffDelay(3, { base: 100, max: 500, random: () => 0.5 }), 375);
});

test("retryAfterMs: delta-seconds and HTTP-date", () => {
  const now = Date.parse("Wed, 21 Oct 2026 07:28:00 GMT");
  assert.equal(retryAfterMs("5", now), 5000);
  assert.equal(retryAfterMs(" 0 ", now), 0);
  assert.equal(retryAfterMs("Wed, 21 Oct 2026 07:28:30 GMT", now), 30000);
  assert.equal(retryAfterMs("Wed, 21 Oct 2026 07:27:00 GMT", now), 0);
  assert.equal(retryAfterMs(null, now), null);
  assert.equal(retryAfterMs("soon", now), null);
});

const LOCAL = [
  "v=0",
  "a=group:BUNDLE 0 1",
  "m=audio 9 UDP/TLS/RTP/SAVPF 111",
  "a=mid:0",
  "a=ice-ufrag:Uf1",
  "a=ice-pwd:PwPwPwPwPwPwPwPwPwPwPwPw",
  "m=video 9 UDP/TLS/RTP/SAVPF 96",
  "a=mid:1",
  "a=ice-ufrag:Uf1",
  "a=ice-pwd:PwPwPwPwPwPwPwPwPwPwPwPw",
  "",
].join("\r\n");

test("candidateFragment: RFC 8840 fragment grouped by mid, CRLF lines", () => {
  const frag = candidateFragment(LOCAL, [
    { candidate: "candidate:1 1 udp 2122260223 192.0.2.1 50000 typ host", sdpMid: "0" },
    { candidate: "a=candidate:2 1 udp 1686052607 198.51.100.7 6000 typ srflx raddr 0.0.0.0 rport 0", sdpMid: "0" },
    { candidate: "", sdpMid: "0" },
  ]);
  assert.equal(
    frag,
    [
      "a=ice-ufrag:Uf1",
      "a=ice-pwd:PwPwPwPwPwPwPwPwPwPwPwPw",
      "m=audio 9 RTP/AVP 0",
      "a=mid:0",
      "a=candidate:1 1 udp 2122260223 192.0.2.1 50000 typ host",
      "a=candidate:2 1 udp 1686052607 198.51.100.7 6000 typ srflx raddr 0.0.0.0 rport 0",
      "",
    ].join("\r\n"),
  );
});

test("candidateFragment: end-of-candidates alone names the first mid", () => {
  assert.equal(
    candidateFragment(LOCAL, [], true),
    "a=ice-ufrag:Uf1\r\na=ice-pwd:PwPwPwPwPwPwPwPwPwPwPwPw\r\nm=audio 9 RTP/AVP 0\r\na=mid:0\r\na=end-of-candidates\r\n",
  );
  const both = candidateFragment(LOCAL, [{ candidate: "candidate:1 1 udp 1 192.0.2.1 1 typ host", sdpMid: null }], true);
  assert.match(both, /a=mid:0\r\na=candidate:1 1 udp 1 192\.0\.2\.1 1 typ host\r\na=end-of-candidates\r\n$/);
});

test("checkResponse: problem+json detail, text bodies, Retry-After", async () => {
  const ok = new Response("x", { status: 201 });
  assert.equal(await checkResponse(ok), ok);
  const problem = new Response(JSON.stringify({ title: "Busy", detail: "server full" }), {
    status: 503,
    headers: { "Content-Type": "application/problem+json", "Retry-After": "4" },
  });
  await assert.rejects(checkResponse(problem), (e) => {
    assert.ok(e instanceof HttpError);
    assert.equal(e.status, 503);
    assert.equal(e.detail, "server full");
    assert.equal(e.retryAfter, 4000);
    assert.equal(e.message, "HTTP 503: server full");
    return true;
  });
  await assert.rejects(checkResponse(new Response("nope", { status: 400 })), { status: 400, detail: "nope" });
});

test("authHeaders adds a bearer token only when given", () => {
  assert.deepEqual(authHeaders("t", { A: "1" }), { A: "1", Authorization: "Bearer t" });
  assert.deepEqual(authHeaders(null, { A: "1" }), { A: "1" });
  assert.deepEqual(authHeaders(""), {});
});

test("Timers cancels one timer or all of them", () => {
  const pending = new Map();
  let next = 1;
  const timers = new Timers(
    (fn) => {
      pending.set(next, fn);
      return next++;
    },
    (handle) => pending.delete(handle),
  );
  const fired = [];
  const a = timers.start(() => fired.push("a"), 10);
  timers.start(() => fired.push("b"), 20);
  timers.start(() => fired.push("c"), 30);
  timers.cancel(a);
  assert.deepEqual([...pending.keys()], [2, 3]);
  pending.get(2)();
  assert.deepEqual(fired, ["b"]);
  timers.cancelAll();
  assert.equal(pending.size, 1); // the fired one's handle is not cleared again
  timers.cancel(null);
});
