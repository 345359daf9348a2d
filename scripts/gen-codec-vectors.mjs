#!/usr/bin/env node
// Regenerates the codec test vectors in protocol/vectors/ with the real npm packages:
// peerjs-js-binarypack 2.1.0 (BinaryPack), peerjs 1.5.5's chunker logic (reproduced
// below: it is not exported), and @msgpack/msgpack 2.8.0 (the MsgPack serializer).
//
// Run from tests/js so the packages resolve from its node_modules:
//   cd tests/js && node ../../scripts/gen-codec-vectors.mjs
//
// Each file holds cases { name, value, hex | sha256+len+head, decoded } where `value` and
// `decoded` are typed descriptions (see `describe` below) that the Rust tests in
// src/peer/codec/vectors.rs turn into `Value`s.

import { createRequire } from "node:module";
import { pathToFileURL, fileURLToPath } from "node:url";
import { createHash } from "node:crypto";
import fs from "node:fs";
import path from "node:path";

process.env.TZ = "UTC"; // Date.prototype.toString() depends on the time zone.

const require = createRequire(path.join(process.cwd(), "package.json"));
const load = async (name) => {
  const mod = await import(pathToFileURL(require.resolve(name)).href);
  return mod.default && !mod.pack && !mod.encode ? mod.default : mod;
};
const binarypack = await load("peerjs-js-binarypack");
const msgpack = await load("@msgpack/msgpack");
if (typeof binarypack.pack !== "function" || typeof msgpack.encode !== "function") throw new Error("packages did not load");
// Read package.json files directly (some packages do not export them).
const pkgVersion = (name) =>
  JSON.parse(fs.readFileSync(path.join(process.cwd(), "node_modules", name, "package.json"), "utf8")).version;
const versions = {
  "peerjs-js-binarypack": pkgVersion("peerjs-js-binarypack"),
  "@msgpack/msgpack": pkgVersion("@msgpack/msgpack"),
  peerjs: pkgVersion("peerjs"),
};
if (versions["peerjs-js-binarypack"] !== "2.1.0" || versions["@msgpack/msgpack"] !== "2.8.0") {
  throw new Error(`unexpected package versions ${JSON.stringify(versions)}`);
}

const outDir = path.join(path.dirname(fileURLToPath(import.meta.url)), "..", "protocol", "vectors");
fs.mkdirSync(outDir, { recursive: true });

// ---------------------------------------------------------------------------------------
// Typed descriptions: JSON cannot tell -0, NaN, undefined, binary or key types apart.
//   {t:"null"} {t:"undefined"} {t:"bool",v} {t:"num",bits:<f64 bits hex>} {t:"str",v}
//   {t:"bin",hex} | {t:"bin",pattern:{len,seed}}   bytes[i] = (i*31 + seed) & 0xff
//   {t:"str",repeat,n}  (the string `repeat` n times)
//   {t:"arr",v:[...]} {t:"map",v:[[k,v],...]} (JS object: string keys in Object.keys order)
//   {t:"arr",range:{len,mod}} (i % mod)  {t:"arr",items:{len,prefix}} (prefix + i)
//   {t:"map",keys:{len,prefix,mod}} ({prefix+i: i % mod})
//   {t:"date",ms} {t:"ext",type,hex} {t:"int",v:<decimal>} (exact 64-bit integer)
// `decoded` is what JS's decoder returns ("same" if equal to `value`); `rust_decoded`, when
// present, is what we decode instead (exact 64-bit integers where JS rounds).
const f64 = new DataView(new ArrayBuffer(8));
const numBits = (x) => {
  f64.setFloat64(0, x);
  return f64.getBigUint64(0).toString(16).padStart(16, "0");
};
const hex = (u8) => Buffer.from(u8.buffer, u8.byteOffset, u8.byteLength).toString("hex");
const pattern = (len, seed) => {
  const b = new Uint8Array(len);
  for (let i = 0; i < len; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
};
const patterns = new Map(); // Uint8Array/ArrayBuffer -> {len, seed}, to keep files small
const pat = (len, seed) => {
  const b = pattern(len, seed);
  patterns.set(b, { len, seed });
  patterns.set(b.buffer, { len, seed });
  return b;
};

// Big generated containers, described by their recipe instead of element by element.
const recipes = new Map();
const rangeArr = (len, mod) => {
  const a = Array.from({ length: len }, (_, i) => i % mod);
  recipes.set(a, { t: "arr", range: { len, mod } });
  return a;
};
const itemsArr = (len, prefix) => {
  const a = Array.from({ length: len }, (_, i) => `${prefix}${i}`);
  recipes.set(a, { t: "arr", items: { len, prefix } });
  return a;
};
const keysMap = (len, prefix, mod) => {
  const o = Object.fromEntries(Array.from({ length: len }, (_, i) => [`${prefix}${i}`, i % mod]));
  recipes.set(o, { t: "map", keys: { len, prefix, mod } });
  return o;
};

// `compact` uses recipes, patterns and repeated-string forms to keep the files small.
function describe(v, compact = true) {
  if (v === null) return { t: "null" };
  if (v === undefined) return { t: "undefined" };
  if (typeof v === "boolean") return { t: "bool", v };
  if (typeof v === "number") return { t: "num", bits: numBits(v) };
  if (typeof v === "string") {
    const w = v.toWellFormed();
    if (compact && w.length > 256) {
      const unit = String.fromCodePoint(w.codePointAt(0));
      if (unit.repeat(w.length / unit.length) === w) return { t: "str", repeat: unit, n: w.length / unit.length };
    }
    return { t: "str", v: w };
  }
  if (v instanceof Date) return { t: "date", ms: v.getTime() };
  if (v instanceof msgpack.ExtData) return { t: "ext", type: v.type, hex: hex(v.data) };
  if (v instanceof ArrayBuffer || ArrayBuffer.isView(v)) {
    const p = compact && patterns.get(v);
    if (p) return { t: "bin", pattern: p };
    const u8 = v instanceof ArrayBuffer ? new Uint8Array(v) : new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
    return { t: "bin", hex: hex(u8) };
  }
  if (compact && recipes.has(v)) return recipes.get(v);
  if (Array.isArray(v)) return { t: "arr", v: v.map((x) => describe(x, compact)) };
  if (typeof v === "object")
    return { t: "map", v: Object.keys(v).map((k) => [describe(k, compact), describe(v[k], compact)]) };
  throw new Error(`cannot describe ${typeof v}`);
}

// What JS decoded: "same" when it equals the input, else its description.
function describeDecoded(decoded, input) {
  const d = describe(decoded, false);
  return JSON.stringify(d) === JSON.stringify(describe(input, false)) ? "same" : describe(decoded);
}

// Exact 64-bit integer of a top-level cf/d3 (JS rounds it to a double; we keep it exact).
function exactInt(u8) {
  if (u8.length !== 9 || (u8[0] !== 0xcf && u8[0] !== 0xd3)) return undefined;
  const raw = Buffer.from(u8.subarray(1)).readBigUInt64BE();
  const v = u8[0] === 0xd3 ? BigInt.asIntN(64, raw) : raw;
  return { t: "int", v: v.toString() };
}

// Big packed outputs are stored as a digest; Rust re-creates the bytes with its encoder.
function bytesField(u8) {
  if (u8.byteLength <= 4096) return { hex: hex(u8) };
  return {
    len: u8.byteLength,
    sha256: createHash("sha256").update(u8).digest("hex"),
    head: hex(u8.subarray(0, 32)),
  };
}

// ---------------------------------------------------------------------------------------
// Values covering every tag and edge.
const ints = [
  0, 1, 31, 127, 128, 255, 256, 65535, 65536, 2 ** 32 - 1, 2 ** 32, 2 ** 53 - 1, 2 ** 53, 2 ** 60,
  0x0fffffffffffffff, 2 ** 63, 2 ** 63 + 2048, 2 ** 64 - 2048, 2 ** 64, -1, -31, -32, -33, -127, -128,
  -129, -32767, -32768, -32769, -(2 ** 31) + 1, -(2 ** 31), -(2 ** 31) - 1, -(2 ** 53), -(2 ** 63), -0,
];
const floats = [
  0.5, 1.5, -1.5, 0.1, -0.1, Math.PI, -Math.E, 1 / 3, 1e-7, 1.5e-300, 123456.789, 2 ** 52 + 0.5, -(2 ** 51 + 0.25),
  2.2250738585072014e-308, 5e-324, 1e-310, -2.5e-320, NaN, 0.999999999999999, 1.0000000000000002,
];
// Values within a few ulps of powers of two, where BinaryPack's Math.log-based exponent
// goes wrong: the Rust encoder must reproduce those exact (wrong) bits.
const nearPow2 = [];
{
  const dv = new DataView(new ArrayBuffer(8));
  for (const k of [-1022, -1000, -745, -300, -100, -60, -30, -20, -10, -4, -3, -2, -1, 1, 2, 3, 5, 10, 20, 30, 40, 50, 51]) {
    dv.setFloat64(0, 2 ** k);
    const b = dv.getBigUint64(0);
    for (const d of [-3n, -2n, -1n, 1n, 2n, 3n, 17n, -17n, 300n, -300n]) {
      dv.setBigUint64(0, b + d);
      const x = dv.getFloat64(0);
      if (Math.floor(x) !== x) nearPow2.push(x, -x);
    }
  }
}
const strings = [
  "", "a", "café", "😀", "\u{10ffff}", "日本語テキスト", "x".repeat(15), "y".repeat(16), "é".repeat(8),
  "null\u0000byte", "line\nbreak \"quoted\" \\", "z".repeat(65535), "é".repeat(32768), "€".repeat(40000),
];
const bins = [0, 1, 15, 16, 255, 256, 65535, 65536, 70000].map((n, i) => pat(n, i));

const binarypackCases = [];
const add = (name, value) => binarypackCases.push({ name, value });
add("null", null);
add("undefined", undefined);
add("true", true);
add("false", false);
for (const n of ints) add(`int ${Object.is(n, -0) ? "-0" : n}`, n);
for (const x of floats) add(`float ${x}`, x);
nearPow2.forEach((x, i) => add(`float near 2^k #${i}`, x));
strings.forEach((s, i) => add(`string #${i} (${Buffer.byteLength(s)} bytes)`, s));
bins.forEach((b, i) => add(`binary ${b.length} bytes`, i % 2 ? b.buffer : b));
add("Int32Array as raw", new Int32Array([1, -2, 0x7fffffff]));
// (A DataView makes pack throw: it has no BYTES_PER_ELEMENT. Not representable as a Value.)
add("empty array", []);
add("array 15", Array.from({ length: 15 }, (_, i) => i));
add("array 16", Array.from({ length: 16 }, (_, i) => i * 1000));
add("array 65536", rangeArr(65536, 200));
add("nested arrays", [[], [[1], [2, [3, ["deep"]]]], [null, true, 1.5]]);
add("empty map", {});
add("map", { a: 1, b: "two", c: [3], d: { e: null } });
add("map 16 keys", Object.fromEntries(Array.from({ length: 16 }, (_, i) => [`k${i}`, i])));
add("map 70000 keys", keysMap(70000, "k", 2));
add("map integer-like keys (JS order)", { b: 1, 2: "two", a: 3, 1: "one" });
add("map unicode keys", { "ключ": "значение", "😀": [1, 2] });
add("map undefined value", { a: undefined, b: 1 });
add("Date (toString, UTC)", new Date(Date.UTC(2024, 1, 29, 13, 5, 9, 7)));
add("class instance", new (class Point { constructor() { this.x = 1; this.y = -2.5; } })());
add("close control", { __peerData: { type: "close" } });
add("user object with __peerData 0", { __peerData: 0, x: 1 });
add("mixed message", { type: "msg", room: "lobby", seq: 42, at: 1700000000123, body: { text: "héllo", tags: ["a", "b"], bin: pat(20, 7) } });

// pack() recurses once per array element / map entry (packNext), so JS overflows its stack
// on a few thousand elements: such a message cannot be sent from a browser at all. For
// those we assemble the bytes from the JS packing of the header and of every element
// (the format is unambiguous) and check that JS unpacks them.
function packManually(value) {
  const parts = [];
  const header = (n, fix, t16, t32) =>
    n <= 15 ? [fix + n] : n <= 0xffff ? [t16, n >> 8, n & 0xff] : [t32, n >>> 24, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff];
  if (Array.isArray(value)) {
    parts.push(Uint8Array.from(header(value.length, 0x90, 0xdc, 0xdd)));
    for (const v of value) parts.push(new Uint8Array(binarypack.pack(v)));
  } else {
    const keys = Object.keys(value);
    parts.push(Uint8Array.from(header(keys.length, 0x80, 0xde, 0xdf)));
    for (const k of keys) parts.push(new Uint8Array(binarypack.pack(k)), new Uint8Array(binarypack.pack(value[k])));
  }
  return new Uint8Array(Buffer.concat(parts));
}

function packCase({ name, value }) {
  let packed;
  let note;
  try {
    packed = new Uint8Array(binarypack.pack(value));
  } catch (e) {
    if (!(e instanceof RangeError) || typeof value !== "object") {
      return { name, value: describe(value), error: String(e.message) };
    }
    packed = packManually(value);
    note = `JS pack() fails (${e.message}); bytes assembled element by element`;
  }
  let decoded;
  try {
    decoded = describeDecoded(binarypack.unpack(packed.buffer), value);
  } catch (e) {
    decoded = { error: String(e.message) };
  }
  const exact = exactInt(packed);
  return {
    name,
    value: describe(value),
    ...bytesField(packed),
    decoded,
    ...(exact ? { rust_decoded: exact } : {}),
    ...(note ? { note } : {}),
  };
}

// Values the encoder refuses.
const errorCases = [Infinity, -Infinity, 1e300, 2 ** 64 + 4096, -(2 ** 63) - 4096].map((x) => ({ name: `error ${x}`, value: x }));

// Hand-made inputs for the decoder only. `rust` = "error" where we deliberately reject
// what JS reads leniently (missing bytes read as 0).
const decodeOnly = [
  ["c1 undefined", "92c101"],
  ...["c4", "c5", "c6", "c7", "c8", "c9", "d4", "d5", "d6", "d7"].map((t) => [`${t} undefined, nothing consumed`, `93${t}01a0`]),
  ["cb zero reads as 2^-1023", "cb0000000000000000"],
  ["cb negative zero", "cb8000000000000000"],
  ["cb subnormal bits", "cb000fffffffffffff"],
  ["cb infinity bits", "cb7ff0000000000000"],
  ["cb NaN bits read as infinity", "cbfff8000000000000"],
  ["cb 1.5", "cb3ff8000000000000"],
  ["ca 1.5", "ca3fc00000"],
  ["ca zero", "ca00000000"],
  ["ca infinity bits stay finite", "ca7f800000"],
  ["ca negative", "cac1480000"],
  ["cf max", "cfffffffffffffffff"],
  ["cf 2^53+1", "cf0020000000000001"],
  ["d3 -1", "d3ffffffffffffffff"],
  ["d3 min", "d38000000000000000"],
  ["d0 -128", "d080"],
  ["d1 -1", "d1ffff"],
  ["d2 min", "d280000000"],
  ["map int keys", "8201a161c3a162"],
  ["map duplicate keys", "82b17801b17802"],
  ["map null/true/array/bin keys", "84c001c3029201020300a1a104"],
  ["map integer-like keys reordered by JS", "83b162c30502b13101"],
  ["string C1 bytes", "b2c280c29f"],
  ["string raw 0x80 0x9f (one-byte in JS)", "b2809f"],
  ["string overlong NUL", "b2c080"],
  ["string CESU-8 surrogate pair", "b6eda080edb080"],
  ["string lone surrogate", "b3eda080"],
  ["string truncated sequence", "b2e282"],
  ["string above U+10FFFF throws", "b4f7bfbfbf"],
  ["trailing bytes ignored", "0102"],
  ["raw slice", "a3010203"],
  ["str16", "d80003616263"],
  ["raw32", "db00000002abcd"],
  ["array16", "dc00030102c0"],
  ["map32", "df00000001a161c2"],
  ["truncated array (JS reads 0)", "9201", "error"],
  ["empty input (JS reads 0)", "", "error"],
  ["truncated int8 (JS reads 0)", "d0", "error"],
  ["truncated u16", "cd01", "error"],
  ["truncated raw", "a3", "error"],
];

function unpackCase([name, h, rust]) {
  const u8 = Uint8Array.from(Buffer.from(h, "hex"));
  let decoded;
  try {
    decoded = describe(binarypack.unpack(u8.buffer));
  } catch (e) {
    decoded = { error: String(e.message) };
  }
  const exact = exactInt(u8);
  return { name, hex: h, decoded, ...(rust ? { rust } : {}), ...(exact ? { rust_decoded: exact } : {}) };
}

// peerjs 1.5.5 BinaryPackChunker + BinaryPack._send, reproduced (not exported):
// packed > chunkedMTU (16300) → {__peerData: id, n, data: slice, total} per slice.
class Chunker {
  chunkedMTU = 16300;
  _dataCount = 1;
  chunk(blob) {
    const chunks = [];
    const size = blob.byteLength;
    const total = Math.ceil(size / this.chunkedMTU);
    let index = 0;
    let start = 0;
    while (start < size) {
      const end = Math.min(size, start + this.chunkedMTU);
      chunks.push({ __peerData: this._dataCount, n: index, data: blob.slice(start, end), total });
      start = end;
      index++;
    }
    this._dataCount++;
    return chunks;
  }
}
function peerjsSend(chunker, data) {
  const blob = binarypack.pack(data);
  if (blob.byteLength > chunker.chunkedMTU) return chunker.chunk(blob).map((c) => new Uint8Array(binarypack.pack(c)));
  return [new Uint8Array(blob)];
}
const chunker = new Chunker();
const chunkMessages = [
  { name: "40 KB message", value: { name: "blob", data: pat(40000, 3), note: "chunked into 3" } },
  { name: "small message between", value: { tiny: true } },
  { name: "string of exactly 16300 packed bytes (not chunked)", value: "s".repeat(16297) },
  { name: "16301 packed bytes (2 chunks)", value: "s".repeat(16298) },
  { name: "70 KB array", value: itemsArr(7000, "item-") },
];
const chunkCases = chunkMessages.map(({ name, value }) => ({
  name,
  value: describe(value),
  frames: peerjsSend(chunker, value).map(bytesField),
}));

// MsgPack: @msgpack/msgpack Encoder defaults, as peerjs's MsgPack serializer uses it.
const encoder = new msgpack.Encoder();
const msgpackValues = [
  ["null", null],
  ["undefined → nil", undefined],
  ["true", true],
  ["false", false],
  ...[...ints, ...[2 ** 53 + 2, -(2 ** 53) - 2]].map((n) => [`int ${Object.is(n, -0) ? "-0" : n}`, n]),
  ...floats.map((x) => [`float ${x}`, x]),
  ["Infinity", Infinity],
  ["-Infinity", -Infinity],
  ...["", "a", "x".repeat(31), "x".repeat(32), "é".repeat(128), "y".repeat(255), "y".repeat(256), "z".repeat(65535), "z".repeat(65536), "😀日本"].map((s) => [`string ${Buffer.byteLength(s)} bytes`, s]),
  ...[0, 1, 255, 256, 65535, 65536].map((n) => [`Uint8Array ${n}`, pat(n, n & 0xff)]),
  ["Int32Array → bin", new Int32Array([1, -2])],
  // A bare ArrayBuffer is not a view: @msgpack/msgpack encodes it as an empty map. We
  // always send binary as bin (the Rust test checks only the decoding of this case).
  ["ArrayBuffer → {} (quirk)", new Uint8Array([1, 2]).buffer],
  ["empty array", []],
  ["array 15", Array.from({ length: 15 }, (_, i) => i)],
  ["array 16", Array.from({ length: 16 }, (_, i) => -i)],
  ["array 65536", rangeArr(65536, 8)],
  ["empty map", {}],
  ["map 15", Object.fromEntries(Array.from({ length: 15 }, (_, i) => [`k${i}`, i]))],
  ["map 16", Object.fromEntries(Array.from({ length: 16 }, (_, i) => [`k${i}`, i]))],
  ["map 65536", keysMap(65536, "k", 3)],
  ["map undefined value → nil", { a: undefined }],
  ["nested", { a: [1, { b: [null, "c"] }], d: { e: { f: 1.25 } } }],
  ["Date → timestamp32", new Date(Date.UTC(2024, 0, 1))],
  ["Date with ms → timestamp64", new Date(Date.UTC(2024, 1, 29, 13, 5, 9, 7))],
  ["Date before 1970 → timestamp96", new Date(-1500)],
  ["Date far future → timestamp96", new Date(2 ** 34 * 1000 + 5)],
  ["ExtData type 5, 3 bytes", new msgpack.ExtData(5, new Uint8Array([1, 2, 3]))],
  ["ExtData fixext 1/2/4/8/16", [1, 2, 4, 8, 16].map((n) => new msgpack.ExtData(n, pattern(n, n)))],
  ["ExtData 256 bytes (ext16)", new msgpack.ExtData(-7, pattern(256, 1))],
  ["close control", { __peerData: { type: "close" } }],
];
function msgpackCase([name, value]) {
  const bytes = encoder.encode(value);
  let decoded;
  try {
    decoded = describeDecoded(msgpack.decode(bytes), value);
  } catch (e) {
    decoded = { error: String(e.message) };
  }
  const exact = exactInt(bytes);
  const quirk = value instanceof ArrayBuffer ? { js_quirk: "ArrayBuffer encoded as an empty map" } : {};
  return { name, value: describe(value), ...bytesField(bytes), decoded, ...(exact ? { rust_decoded: exact } : {}), ...quirk };
}
// Decode-only msgpack inputs (standard forms @msgpack/msgpack does not write).
const msgpackDecodeOnly = [
  ["float32", "ca3fc00000"],
  ["str8 short", "d903616263"],
  ["bin16", "c50002abcd"],
  ["uint8 small", "cc05"],
  ["int64 small", "d3ffffffffffffffff"],
  ["uint64 max", "cfffffffffffffffff"],
  ["map16", "de0001a161c3"],
  ["array32", "dd0000000101"],
  ["map int key", "81017b"],
  ["timestamp64 with nanos", "d7ff0000000400000000"],
  ["ext8 empty", "c70009"],
].map(([name, h]) => {
  let decoded;
  try {
    decoded = describe(msgpack.decode(Buffer.from(h, "hex")));
  } catch (e) {
    decoded = { error: String(e.message) };
  }
  const exact = exactInt(Buffer.from(h, "hex"));
  return { name, hex: h, decoded, ...(exact ? { rust_decoded: exact } : {}) };
});
// peerjs's MsgPack stream: each message encoded, then cut into ≤ 32768-byte frames.
const streamValues = [{ a: 1 }, { blob: pat(40000, 9), n: 2 }, "tail"];
const streamCase = {
  name: "three messages, the second over 32768 bytes",
  values: streamValues.map(describe),
  frames: streamValues.flatMap((v) => {
    const b = encoder.encode(v);
    const out = [];
    for (let i = 0; i < b.length; i += 32768) out.push(bytesField(b.subarray(i, i + 32768)));
    return out;
  }),
};

const header = (what) => ({
  generated_by: "scripts/gen-codec-vectors.mjs",
  what,
  versions,
});
const write = (file, obj) => {
  fs.writeFileSync(path.join(outDir, file), JSON.stringify(obj, null, 1) + "\n");
  console.log(`wrote protocol/vectors/${file}`);
};
write("binarypack.json", {
  ...header("BinaryPack pack/unpack (peerjs-js-binarypack)"),
  cases: binarypackCases.map(packCase),
  errors: errorCases.map(packCase),
  decode_only: decodeOnly.map(unpackCase),
});
write("chunking.json", {
  ...header("peerjs 1.5.5 BinaryPack chunking (one connection, messages in order, ids from 1)"),
  messages: chunkCases,
});
write("msgpack.json", {
  ...header("MessagePack (@msgpack/msgpack Encoder defaults) and peerjs's 32768-byte stream framing"),
  cases: msgpackValues.map(msgpackCase),
  decode_only: msgpackDecodeOnly,
  stream: streamCase,
});
