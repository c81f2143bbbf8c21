// Unit tests of the generated decoders (src/generated/received.ts): what the server left out reads as its
// proto3 default, fields with presence stay unset, EditOps stay as sent.
import assert from "node:assert/strict";
import { test } from "node:test";
import * as received from "../src/generated/received";
import {
  decodeFitProgress,
  decodeParticipant,
  decodeRenderedFrame,
  decodeWsResponse,
} from "../src/generated/received";

test("an empty frame reads as every default, its message field unset", () => {
  const frame = decodeRenderedFrame({});
  assert.deepEqual({ ...frame, data: [...frame.data] }, {
    frame: 0, format: "", width: 0, height: 0, data: [], seq: 0, request_id: 0, render_ms: 0,
  });
  assert.ok(frame.data instanceof Uint8Array);
  assert.equal("roi_mask" in frame, false);
});

test("values that were sent are kept, nested messages decoded with their own defaults", () => {
  const data = new Uint8Array([1, 2, 3]);
  const frame = decodeRenderedFrame({ frame: 7, format: "raw", data, roi_mask: { width: 4 } });
  assert.equal(frame.frame, 7);
  assert.equal(frame.format, "raw");
  assert.equal(frame.data, data);
  assert.equal(frame.roi_mask?.width, 4);
  assert.equal(frame.roi_mask?.height, 0);
  assert.equal(frame.roi_mask?.regions.length, 0);
  assert.equal(frame.roi_mask?.visible, undefined);
});

test("nil means unset, and a value of the wrong type reads as the default", () => {
  assert.deepEqual(decodeParticipant({ participant_id: null, name: 5, frame: "3", cursor: null }),
                   { participant_id: "", name: "", color: "", frame: 0, tool: "" });
});

test("an optional field stays undefined when absent and keeps its value when sent", () => {
  assert.equal(decodeParticipant({}).cursor, undefined);
  assert.deepEqual(decodeParticipant({ cursor: [3, 4] }).cursor, [3, 4]);
});

test("only the oneof member that was sent is set", () => {
  const response = decodeWsResponse({ request_id: 9, event: { snapshot: { session: { session_id: "s" } } } });
  assert.equal(response.request_id, 9);
  assert.deepEqual(Object.keys(response), ["request_id", "event"]);
  assert.deepEqual(Object.keys(response.event ?? {}), ["snapshot"]);
  const snapshot = response.event?.snapshot;
  assert.deepEqual(snapshot?.participants, []);
  assert.deepEqual(snapshot?.authors, []);
  assert.equal(snapshot?.participant_id, "");
  assert.deepEqual(snapshot?.session, { session_id: "s", bundle: "", join_token: "", seq: 0, participants: 0 });
  assert.equal(snapshot?.document, undefined);
  assert.equal(decodeWsResponse(undefined).request_id, 0);
});

test("repeated and map fields default to empty, their items decoded", () => {
  const progress = decodeFitProgress({ losses: { rgb: 0.5 }, bundle: { roi: { polygons: [{}] } } });
  assert.deepEqual(progress.losses, { rgb: 0.5 });
  assert.deepEqual(decodeFitProgress({}).losses, {});
  assert.deepEqual(progress.bundle?.roi?.polygons, [{ points: [] }]);
  assert.deepEqual(progress.bundle?.roi?.visible, []);
});

test("an EditOp is kept exactly as sent: an update's set names only what it changes", () => {
  const op = { id: "u1", type: "update", target: "s1", set: { opacity: 0.5 } };
  const snapshot = decodeWsResponse({ event: { snapshot: { document: { ops: [op] } } } }).event?.snapshot;
  assert.equal(snapshot?.document?.version, 0);
  assert.deepEqual(snapshot?.document?.ops, [op]);
  const applied = decodeWsResponse({ event: { applied: { seq: 4, op } } }).event?.applied;
  assert.deepEqual(applied, { seq: 4, participant_id: "", op });
});

test("every decoder reads nothing as a complete message: no field left undefined but those with presence", () => {
  const decoders = Object.entries(received).filter(([name]) => name.startsWith("decode") && name !== "decodeEditOp");
  assert.ok(decoders.length > 20);
  for (const [name, decode] of decoders) {
    const empty = (decode as (raw: unknown) => Record<string, unknown>)(undefined);
    for (const [key, value] of Object.entries(empty)) assert.notEqual(value, undefined, `${name}: ${key}`);
  }
});
