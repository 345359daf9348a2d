//! BinaryPack exactly as `peerjs-js-binarypack` 2.1.0 packs and unpacks it.
//!
//! # Format
//! Big-endian, a MessagePack dialect. Type bytes: `00–7f` positive fixint, `e0–ff`
//! negative fixint, `a0–af` raw (binary) and `b0–bf` string with length in the low nibble,
//! `90–9f` fixarray, `80–8f` fixmap, `c0` null, `c1` undefined, `c2`/`c3` false/true,
//! `ca`/`cb` float32/64, `cc–cf` uint8–64, `d0–d3` int8–64, `d8`/`d9` string with
//! u16/u32 length, `da`/`db` raw with u16/u32 length, `dc`/`dd` array, `de`/`df` map with
//! u16/u32 counts. `c4–c9` and `d4–d7` decode as undefined without consuming a payload.
//!
//! Quirks reproduced: the integer width choice (fixint, then `cc`, `d0`, `cd`, `d1`, `ce`,
//! `d2`, `d3`, `cf`), `-0` → `00`, 2⁶³ → `d3 80 00…` (reads back as −2⁶³), 2⁶⁴ →
//! `cf 00…`, ±∞ and larger integers refused ("Invalid integer"), the float encoder's
//! `Math.log`-based exponent (wrong bits near powers of two and for subnormals; `NaN` →
//! `cb 00…`), the float decoders' "always normal" reading (`cb 00…` → 2⁻¹⁰²³, exponent
//! 0x7ff → ±∞, `ca` never yields ∞/NaN), the lenient UTF-8 decoder, trailing bytes ignored.
//! Deliberate differences: truncated input is an error (JS reads missing single bytes as
//! 0), and integers decode exactly (JS rounds above 2⁵³).

use super::{CodecError, DecoderLimits, Value, js};
use bytes::Bytes;

/// Deepest nesting the encoder accepts (guards the stack against hand-built values).
const MAX_ENCODE_DEPTH: usize = 1024;

/// 2⁶³ as an f64.
const TWO_63: f64 = 9_223_372_036_854_775_808.0;
/// 2⁶⁴ as an f64.
const TWO_64: f64 = 18_446_744_073_709_551_616.0;

/// Packs one value.
///
/// # Errors
/// [`CodecError::InvalidInteger`], [`CodecError::TooDeep`].
pub(crate) fn pack(value: &Value) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(64);
    pack_into(&mut out, value, 0)?;
    Ok(out)
}

fn pack_into(out: &mut Vec<u8>, value: &Value, depth: usize) -> Result<(), CodecError> {
    if depth > MAX_ENCODE_DEPTH {
        return Err(CodecError::TooDeep(MAX_ENCODE_DEPTH));
    }
    match value {
        Value::Null | Value::Undefined => out.push(0xc0),
        Value::Bool(b) => out.push(if *b { 0xc3 } else { 0xc2 }),
        Value::Int(i) => pack_i64(out, *i),
        Value::UInt(u) => pack_u64(out, *u),
        Value::Float(f) => pack_number(out, *f)?,
        Value::Str(s) => pack_str(out, s),
        Value::Bin(b) => pack_bin(out, b),
        Value::Array(items) => {
            pack_len(out, items.len(), 0x90, 0xdc, 0xdd);
            for item in items {
                pack_into(out, item, depth + 1)?;
            }
        }
        Value::Map(entries) => {
            pack_len(out, entries.len(), 0x80, 0xde, 0xdf);
            for (k, v) in entries {
                pack_into(out, k, depth + 1)?;
                pack_into(out, v, depth + 1)?;
            }
        }
        Value::Ext(ty, data) => match value.date_time_value() {
            // A JS Date packs as `Date.prototype.toString()`.
            Some(t) => pack_str(out, &js::date_to_string(t)),
            // `@msgpack/msgpack`'s ExtData is a class instance: packed as `{type, data}`.
            None => {
                out.push(0x82);
                pack_str(out, "type");
                pack_i64(out, i64::from(*ty));
                pack_str(out, "data");
                pack_bin(out, data);
            }
        },
    }
    Ok(())
}

/// Writes a length header: the fix form (`fix + len`) up to 15, then u16, then u32.
fn pack_len(out: &mut Vec<u8>, len: usize, fix: u8, tag16: u8, tag32: u8) {
    if len <= 0x0f {
        out.push(fix + len as u8);
    } else if len <= 0xffff {
        out.push(tag16);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        // Lengths above u32 cannot occur for a DataChannel message; JS would throw
        // "Invalid length". Saturate rather than panic.
        out.push(tag32);
        out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    }
}

pub(crate) fn pack_str(out: &mut Vec<u8>, s: &str) {
    pack_len(out, s.len(), 0xb0, 0xd8, 0xd9);
    out.extend_from_slice(s.as_bytes());
}

pub(crate) fn pack_bin(out: &mut Vec<u8>, b: &[u8]) {
    pack_len(out, b.len(), 0xa0, 0xda, 0xdb);
    out.extend_from_slice(b);
}

/// `pack_integer` for an exact integer: the first width in JS's order that holds it.
pub(crate) fn pack_i64(out: &mut Vec<u8>, n: i64) {
    if (-32..=0x7f).contains(&n) {
        out.push(n as u8);
    } else if (0..=0xff).contains(&n) {
        out.extend_from_slice(&[0xcc, n as u8]);
    } else if (-128..=0x7f).contains(&n) {
        out.extend_from_slice(&[0xd0, n as u8]);
    } else if (0..=0xffff).contains(&n) {
        out.push(0xcd);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else if (-32768..=0x7fff).contains(&n) {
        out.push(0xd1);
        out.extend_from_slice(&(n as i16).to_be_bytes());
    } else if (0..=0xffff_ffff).contains(&n) {
        out.push(0xce);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    } else if (-2_147_483_648..=0x7fff_ffff).contains(&n) {
        out.push(0xd2);
        out.extend_from_slice(&(n as i32).to_be_bytes());
    } else {
        out.push(0xd3);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

/// An unsigned integer: JS compares against `0x7fffffffffffffff`, which is the double
/// 2⁶³, so 2⁶³ itself takes the `d3` branch and wraps to `80 00…`.
fn pack_u64(out: &mut Vec<u8>, u: u64) {
    if let Ok(i) = i64::try_from(u) {
        pack_i64(out, i);
    } else if u == 1 << 63 {
        out.push(0xd3);
        out.extend_from_slice(&i64::MIN.to_be_bytes());
    } else {
        out.push(0xcf);
        out.extend_from_slice(&u.to_be_bytes());
    }
}

/// A JS number: integral values (`Math.floor(x) === x`) go through `pack_integer`, others
/// through `pack_double`.
fn pack_number(out: &mut Vec<u8>, x: f64) -> Result<(), CodecError> {
    if x.floor() != x {
        pack_double(out, x);
        return Ok(());
    }
    if (-TWO_63..TWO_63).contains(&x) {
        // Exact: every integral f64 in this range is an i64. `-0` becomes `00`.
        pack_i64(out, x as i64);
    } else if x == TWO_63 {
        pack_u64(out, 1 << 63);
    } else if x > TWO_63 && x < TWO_64 {
        out.push(0xcf);
        out.extend_from_slice(&(x as u64).to_be_bytes());
    } else if x == TWO_64 {
        // pack_uint64: the high word 2³² wraps to 0.
        out.push(0xcf);
        out.extend_from_slice(&[0; 8]);
    } else {
        return Err(CodecError::InvalidInteger(x));
    }
    Ok(())
}

/// `pack_double`, operation by operation (JS doubles and `ToInt32` wrapping), including
/// its `Math.log`-derived exponent.
fn pack_double(out: &mut Vec<u8>, num: f64) {
    let (sign, num) = if num < 0.0 { (1i32, -num) } else { (0, num) };
    let exp = (js::log(num) / std::f64::consts::LN_2).floor();
    let frac0 = num / js::pow2(exp) - 1.0;
    let frac1 = (frac0 * 4_503_599_627_370_496.0).floor();
    let b32 = 4_294_967_296.0;
    let h32 = sign.wrapping_shl(31)
        | js::to_int32(exp + 1023.0).wrapping_shl(20)
        | (js::to_int32(frac1 / b32) & 0x0fffff);
    let l32 = frac1 % b32;
    out.push(0xcb);
    out.extend_from_slice(&(h32 as u32).to_be_bytes());
    out.extend_from_slice(&js::to_uint32(l32).to_be_bytes());
}

/// Unpacks the first value of `input` (trailing bytes are ignored, as in JS).
///
/// # Errors
/// [`CodecError::Truncated`], [`CodecError::Malformed`] (a string JS cannot decode),
/// [`CodecError::TooDeep`], [`CodecError::TooManyValues`].
pub(crate) fn unpack(input: &Bytes, limits: &DecoderLimits) -> Result<Value, CodecError> {
    let mut u = Unpacker {
        input,
        pos: 0,
        values: 0,
        limits,
    };
    u.value(0)
}

/// Cursor over one message.
struct Unpacker<'a> {
    input: &'a Bytes,
    pos: usize,
    /// Values decoded so far (bounded by `limits.max_values`).
    values: usize,
    limits: &'a DecoderLimits,
}

impl Unpacker<'_> {
    fn remaining(&self) -> usize {
        self.input.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&[u8], CodecError> {
        if n > self.remaining() {
            return Err(CodecError::Truncated(what));
        }
        let s = &self.input[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1, "integer")?[0])
    }
    fn u16(&mut self) -> Result<u16, CodecError> {
        let b = self.take(2, "integer")?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, CodecError> {
        let b = self.take(4, "integer")?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, CodecError> {
        let b = self.take(8, "integer")?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    fn value(&mut self, depth: usize) -> Result<Value, CodecError> {
        self.values += 1;
        if self.values > self.limits.max_values {
            return Err(CodecError::TooManyValues(self.limits.max_values));
        }
        let t = self.take(1, "type byte")?[0];
        Ok(match t {
            0x00..=0x7f => Value::Int(i64::from(t)),
            0xe0..=0xff => Value::Int(i64::from(t as i8)),
            0xa0..=0xaf => self.raw(usize::from(t & 0x0f))?,
            0xb0..=0xbf => self.string(usize::from(t & 0x0f))?,
            0x90..=0x9f => self.array(usize::from(t & 0x0f), depth)?,
            0x80..=0x8f => self.map(usize::from(t & 0x0f), depth)?,
            0xc0 => Value::Null,
            0xc2 => Value::Bool(false),
            0xc3 => Value::Bool(true),
            0xca => Value::Float(read_float32(self.u32()?)),
            0xcb => {
                let h = self.u32()?;
                let l = self.u32()?;
                Value::Float(read_float64(h, l))
            }
            0xcc => Value::Int(i64::from(self.u8()?)),
            0xcd => Value::Int(i64::from(self.u16()?)),
            0xce => Value::Int(i64::from(self.u32()?)),
            0xcf => Value::from(self.u64()?),
            0xd0 => Value::Int(i64::from(self.u8()? as i8)),
            0xd1 => Value::Int(i64::from(self.u16()? as i16)),
            0xd2 => Value::Int(i64::from(self.u32()? as i32)),
            0xd3 => Value::Int(self.u64()? as i64),
            // c1, c4–c9, d4–d7: undefined, no payload consumed.
            0xc1 | 0xc4..=0xc9 | 0xd4..=0xd7 => Value::Undefined,
            0xd8 => {
                let n = self.u16()?;
                self.string(usize::from(n))?
            }
            0xd9 => {
                let n = self.u32()?;
                self.string(n as usize)?
            }
            0xda => {
                let n = self.u16()?;
                self.raw(usize::from(n))?
            }
            0xdb => {
                let n = self.u32()?;
                self.raw(n as usize)?
            }
            0xdc => {
                let n = self.u16()?;
                self.array(usize::from(n), depth)?
            }
            0xdd => {
                let n = self.u32()?;
                self.array(n as usize, depth)?
            }
            0xde => {
                let n = self.u16()?;
                self.map(usize::from(n), depth)?
            }
            0xdf => {
                let n = self.u32()?;
                self.map(n as usize, depth)?
            }
        })
    }

    fn raw(&mut self, n: usize) -> Result<Value, CodecError> {
        if n > self.remaining() {
            return Err(CodecError::Truncated("binary"));
        }
        let b = self.input.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(Value::Bin(b))
    }

    fn string(&mut self, n: usize) -> Result<Value, CodecError> {
        let bytes = self.take(n, "string")?;
        Ok(Value::Str(match std::str::from_utf8(bytes) {
            Ok(s) => s.to_owned(),
            Err(_) => js_utf8_decode(bytes)?,
        }))
    }

    fn array(&mut self, n: usize, depth: usize) -> Result<Value, CodecError> {
        if depth >= self.limits.max_depth {
            return Err(CodecError::TooDeep(self.limits.max_depth));
        }
        // Every element takes at least its type byte.
        if n > self.remaining() {
            return Err(CodecError::Truncated("array"));
        }
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            items.push(self.value(depth + 1)?);
        }
        Ok(Value::Array(items))
    }

    fn map(&mut self, n: usize, depth: usize) -> Result<Value, CodecError> {
        if depth >= self.limits.max_depth {
            return Err(CodecError::TooDeep(self.limits.max_depth));
        }
        if n.saturating_mul(2) > self.remaining() {
            return Err(CodecError::Truncated("map"));
        }
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            let k = self.value(depth + 1)?;
            let v = self.value(depth + 1)?;
            entries.push((k, v));
        }
        Ok(Value::Map(entries))
    }
}

/// `unpack_float`: always read as a normal number (no ∞/NaN, exponent 0 is 2⁻¹²⁷).
fn read_float32(u: u32) -> f64 {
    let sign = if u >> 31 == 0 { 1.0 } else { -1.0 };
    let exp = ((u >> 23) & 0xff) as i32 - 127;
    let fraction = f64::from((u & 0x7fffff) | 0x800000);
    sign * fraction * js::pow2(f64::from(exp - 23))
}

/// `unpack_double`: exact for normal numbers; exponent 0 reads as 2⁻¹⁰²³ × 1.f (the low
/// 32 bits vanish), exponent 0x7ff as ±∞.
fn read_float64(h: u32, l: u32) -> f64 {
    let sign = if h >> 31 == 0 { 1.0 } else { -1.0 };
    let exp = ((h >> 20) & 0x7ff) as i32 - 1023;
    let hfrac = f64::from((h & 0xfffff) | 0x100000);
    let frac = hfrac * js::pow2(f64::from(exp - 20)) + f64::from(l) * js::pow2(f64::from(exp - 52));
    sign * frac
}

/// `unpack_string`'s hand-written UTF-8 decoder, used when the bytes are not valid UTF-8
/// (for valid UTF-8 it agrees with the standard decoder). Lone surrogates, which a Rust
/// string cannot hold, become U+FFFD.
///
/// # Errors
/// [`CodecError::Malformed`] where JS throws (`String.fromCodePoint` above U+10FFFF).
fn js_utf8_decode(bytes: &[u8]) -> Result<String, CodecError> {
    let at = |i: usize| u32::from(bytes.get(i).copied().unwrap_or(0));
    let mut units: Vec<u16> = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let c = u32::from(bytes[i]);
        let code = if c < 0xa0 {
            i += 1;
            c
        } else if (c ^ 0xc0) < 0x20 {
            let code = ((c & 0x1f) << 6) | (at(i + 1) & 0x3f);
            i += 2;
            code
        } else if (c ^ 0xe0) < 0x10 {
            let code = ((c & 0x0f) << 12) | ((at(i + 1) & 0x3f) << 6) | (at(i + 2) & 0x3f);
            i += 3;
            code
        } else {
            let code = ((c & 0x07) << 18)
                | ((at(i + 1) & 0x3f) << 12)
                | ((at(i + 2) & 0x3f) << 6)
                | (at(i + 3) & 0x3f);
            i += 4;
            code
        };
        if code > 0x10ffff {
            return Err(CodecError::Malformed("invalid code point in string"));
        }
        if code >= 0x10000 {
            let c = code - 0x10000;
            units.push(0xd800 | (c >> 10) as u16);
            units.push(0xdc00 | (c & 0x3ff) as u16);
        } else {
            units.push(code as u16);
        }
    }
    Ok(String::from_utf16_lossy(&units))
}
