// Unit tests of the DOM-free session protocol (node's test runner; `npm test`).
import assert from "node:assert/strict";
import { test } from "node:test";
import { SessionProtocol } from "../src/session";

const params = { sessionId: "s1", joinToken: "jt", name: "Ann", color: "#123456" };

test("a first join carries no identity and no resume point", () => {
  const p = new SessionProtocol();
  assert.deepEqual(p.join(params, 0), { session_id: "s1", join_token: "jt", name: "Ann", color: "#123456",
                                        last_seq: 0, participant_id: "", resume_key: "" });
});

test("the snapshot gives the identity a rejoin presents again, with the last op seen", () => {
  const p = new SessionProtocol();
  p.join(params, 0);
  assert.equal(p.snapshot({ participant_id: "p7", resume_key: "k7", document: { ops: [{ id: "a" }] } }), true);
  const rejoin = p.join(params, 12);
  assert.equal(rejoin.participant_id, "p7");
  assert.equal(rejoin.resume_key, "k7");
  assert.equal(rejoin.last_seq, 12);
});

test("an empty snapshot on resume keeps the document (the server replays what was missed)", () => {
  const p = new SessionProtocol();
  p.join(params, 0);
  p.snapshot({ participant_id: "p1", document: { ops: [] } });
  p.join(params, 5);
  assert.equal(p.snapshot({ document: { ops: [] } }), false);
  assert.equal(p.participantId, "p1"); // a snapshot without the field keeps ours
  p.join(params, 0);
  assert.equal(p.snapshot({ document: { ops: [] } }), true); // a fresh join always resets
});

test("unanswered ops are resent in the order sent, answered ones are not", () => {
  const p = new SessionProtocol();
  p.sent({ id: "a", type: "stroke" });
  p.sent({ id: "b", type: "stroke" });
  p.sent({ id: "c", type: "stroke" });
  p.accepted("b");
  assert.deepEqual(p.resend().map((op) => op.id), ["a", "c"]);
  p.rejected("a", { code: "INVALID_ARGUMENT", message: "bad" }, false);
  assert.deepEqual(p.resend().map((op) => op.id), ["c"]);
  assert.equal(p.waiting, 1);
});

test("a resent op the server already has is a duplicate, not an error; outside the region is plain", () => {
  const p = new SessionProtocol();
  assert.equal(p.rejected("a", { code: "ALREADY_EXISTS", message: "exists" }, true).duplicate, true);
  assert.equal(p.rejected("a", { code: "ALREADY_EXISTS", message: "exists" }, false).duplicate, false);
  const outside = p.rejected("b", { code: "OUT_OF_RANGE", message: "That spot is outside" }, false);
  assert.deepEqual(outside, { duplicate: false, plain: true, message: "That spot is outside" });
  assert.equal(p.rejected("c", undefined, false).message, "unknown reason");
});
