//! [`Value`] conveniences, JavaScript-like conversions and serde glue.
//!
//! # Value ↔ JSON
//!
//! Serializing a `Value` as JSON (the `json` wire format, [`Value::to_json`],
//! [`from_value`]) follows `JSON.stringify`: `Undefined` is `null` in arrays and at the top
//! level and omits its entry in maps; non-finite floats are `null`; a `Float` with an
//! integral value below 2⁶³ is written as an integer (`1`, not `1.0`); map keys are turned
//! into strings like JavaScript property names (`String(key)`: `1` → `"1"`, `null` →
//! `"null"`, binary → `"[object ArrayBuffer]"`); `Bin` becomes an array of byte values
//! (`[1,2,3]`, so it deserializes into `Vec<u8>`); a msgpack timestamp becomes its ISO
//! string (`Date.prototype.toJSON`); other extensions become `{"type":t,"data":[bytes]}`.
//! Parsing JSON into a `Value` keeps object keys in document order (as `Str` keys, with
//! duplicates), integers as `Int`/`UInt` and other numbers as `Float`.

use super::{CodecError, Value, js};
use bytes::Bytes;
use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Msgpack extension type of timestamps.
pub(crate) const TIMESTAMP_EXT: i8 = -1;

impl Value {
    /// The string, if this is a `Str`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The bytes, if this is a `Bin`.
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match self {
            Value::Bin(b) => Some(b),
            _ => None,
        }
    }

    /// The boolean, if this is a `Bool`.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The number as an `i64` if it is an integer that fits (`Int`, `UInt`, or an integral
    /// `Float`, as JavaScript does not tell them apart).
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::Int(i) => Some(i),
            Value::UInt(u) => i64::try_from(u).ok(),
            Value::Float(f) if f.fract() == 0.0 && f >= -(2f64.powi(63)) && f < 2f64.powi(63) => {
                Some(f as i64)
            }
            _ => None,
        }
    }

    /// The number as a `u64` if it is a non-negative integer that fits.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::Int(i) => u64::try_from(i).ok(),
            Value::UInt(u) => Some(u),
            Value::Float(f) if f.fract() == 0.0 && f >= 0.0 && f < 2f64.powi(64) => Some(f as u64),
            _ => None,
        }
    }

    /// Any number as an `f64` (what JavaScript would see).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Int(i) => Some(i as f64),
            Value::UInt(u) => Some(u as f64),
            Value::Float(f) => Some(f),
            _ => None,
        }
    }

    /// The elements, if this is an `Array`.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The entries, if this is a `Map`.
    pub fn as_map(&self) -> Option<&[(Value, Value)]> {
        match self {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    /// JavaScript property access `obj[key]` on a `Map`: the value of the last entry whose
    /// key is the string `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_map()?
            .iter()
            .rev()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    /// True for `Null` and `Undefined`.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null | Value::Undefined)
    }

    /// JavaScript truthiness (`false`, `0`, `NaN`, `""`, `null`, `undefined` are falsy).
    pub fn is_truthy(&self) -> bool {
        match self {
            Value::Null | Value::Undefined => false,
            Value::Bool(b) => *b,
            Value::Int(i) => *i != 0,
            Value::UInt(u) => *u != 0,
            Value::Float(f) => *f != 0.0 && !f.is_nan(),
            Value::Str(s) => !s.is_empty(),
            Value::Bin(_) | Value::Array(_) | Value::Map(_) | Value::Ext(..) => true,
        }
    }

    /// A map from `(key, value)` string-keyed pairs, in order.
    pub fn object<K: Into<String>>(entries: impl IntoIterator<Item = (K, Value)>) -> Value {
        Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| (Value::Str(k.into()), v))
                .collect(),
        )
    }

    /// A msgpack timestamp (extension −1, what a JS `Date` becomes), in the smallest of the
    /// 32/64/96-bit forms, like `@msgpack/msgpack` encodes it. `nanos` must be below 10⁹
    /// (larger values are clamped).
    pub fn timestamp(secs: i64, nanos: u32) -> Value {
        let nanos = nanos.min(999_999_999);
        let data: Vec<u8> = if (0..1 << 34).contains(&secs) {
            if nanos == 0 && secs <= i64::from(u32::MAX) {
                (secs as u32).to_be_bytes().to_vec()
            } else {
                ((u64::from(nanos) << 34) | secs as u64)
                    .to_be_bytes()
                    .to_vec()
            }
        } else {
            let mut d = nanos.to_be_bytes().to_vec();
            d.extend_from_slice(&secs.to_be_bytes());
            d
        };
        Value::Ext(TIMESTAMP_EXT, data.into())
    }

    /// `(seconds, nanoseconds)` since the Unix epoch if this is a msgpack timestamp
    /// (extension −1 with 4, 8 or 12 bytes of data).
    pub fn as_timestamp(&self) -> Option<(i64, u32)> {
        let Value::Ext(TIMESTAMP_EXT, data) = self else {
            return None;
        };
        match data.len() {
            4 => Some((i64::from(u32::from_be_bytes(data[..4].try_into().ok()?)), 0)),
            8 => {
                let v = u64::from_be_bytes(data[..8].try_into().ok()?);
                Some(((v & 0x3_ffff_ffff) as i64, (v >> 34) as u32))
            }
            12 => Some((
                i64::from_be_bytes(data[4..12].try_into().ok()?),
                u32::from_be_bytes(data[..4].try_into().ok()?),
            )),
            _ => None,
        }
    }

    /// The JS `Date` time value (ms since the epoch) of a timestamp, `None` for anything
    /// else or an Invalid Date.
    pub(crate) fn date_time_value(&self) -> Option<Option<f64>> {
        self.as_timestamp().map(|(s, n)| js::date_time_value(s, n))
    }

    /// `String(value)` in JavaScript: how a value becomes a property name.
    pub fn to_js_string(&self) -> String {
        match self {
            Value::Null => "null".into(),
            Value::Undefined => "undefined".into(),
            Value::Bool(b) => b.to_string(),
            Value::Int(i) => {
                if i.unsigned_abs() <= 1 << 53 {
                    i.to_string()
                } else {
                    js::number_to_string(*i as f64)
                }
            }
            Value::UInt(u) => js::number_to_string(*u as f64),
            Value::Float(f) => js::number_to_string(*f),
            Value::Str(s) => s.clone(),
            Value::Bin(_) => "[object ArrayBuffer]".into(),
            Value::Array(items) => items
                .iter()
                .map(|v| {
                    if v.is_null() {
                        String::new()
                    } else {
                        v.to_js_string()
                    }
                })
                .collect::<Vec<_>>()
                .join(","),
            Value::Map(_) => "[object Object]".into(),
            Value::Ext(..) => match self.date_time_value() {
                Some(t) => js::date_to_string(t),
                None => "[object Object]".into(),
            },
        }
    }

    /// Converts to a `serde_json::Value` (see the module docs for the mapping; note that
    /// `serde_json::Map` sorts keys unless serde_json's `preserve_order` is on).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// Converts from a `serde_json::Value` (integers stay `Int`/`UInt`, other numbers
    /// become `Float`, objects become string-keyed maps).
    pub fn from_json(json: serde_json::Value) -> Value {
        match json {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(b),
            serde_json::Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Value::Int(i)
                } else if let Some(u) = n.as_u64() {
                    Value::UInt(u)
                } else {
                    Value::Float(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            serde_json::Value::String(s) => Value::Str(s),
            serde_json::Value::Array(a) => {
                Value::Array(a.into_iter().map(Value::from_json).collect())
            }
            serde_json::Value::Object(o) => Value::Map(
                o.into_iter()
                    .map(|(k, v)| (Value::Str(k), Value::from_json(v)))
                    .collect(),
            ),
        }
    }
}

/// Converts any `Serialize` type into a [`Value`] (through JSON, so struct fields keep
/// their order and byte buffers become arrays of numbers).
///
/// # Errors
/// [`CodecError::Conversion`] if `T`'s `Serialize` fails (e.g. a map with non-string keys).
pub fn to_value<T: Serialize + ?Sized>(value: &T) -> Result<Value, CodecError> {
    let json = serde_json::to_vec(value).map_err(|e| CodecError::Conversion(e.to_string()))?;
    serde_json::from_slice(&json).map_err(|e| CodecError::Conversion(e.to_string()))
}

/// Converts a [`Value`] into any `DeserializeOwned` type (through JSON, with the mapping in
/// the module docs: `Bin` deserializes into `Vec<u8>`, timestamps into ISO strings).
///
/// # Errors
/// [`CodecError::Conversion`] if the value does not fit `T`.
pub fn from_value<T: DeserializeOwned>(value: &Value) -> Result<T, CodecError> {
    let json = serde_json::to_vec(value).map_err(|e| CodecError::Conversion(e.to_string()))?;
    serde_json::from_slice(&json).map_err(|e| CodecError::Conversion(e.to_string()))
}

/// Largest magnitude below which an integral float is written as a JSON integer.
const TWO_63: f64 = 9_223_372_036_854_775_808.0;

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null | Value::Undefined => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(i) => s.serialize_i64(*i),
            Value::UInt(u) => s.serialize_u64(*u),
            Value::Float(f) => {
                if !f.is_finite() {
                    s.serialize_unit()
                } else if f.fract() == 0.0 && f.abs() < TWO_63 {
                    s.serialize_i64(*f as i64)
                } else {
                    s.serialize_f64(*f)
                }
            }
            Value::Str(st) => s.serialize_str(st),
            Value::Bin(b) => {
                let mut seq = s.serialize_seq(Some(b.len()))?;
                for byte in b.iter() {
                    seq.serialize_element(byte)?;
                }
                seq.end()
            }
            Value::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Value::Map(entries) => {
                let mut map = s.serialize_map(None)?;
                for (k, v) in entries {
                    if matches!(v, Value::Undefined) {
                        continue;
                    }
                    match k {
                        Value::Str(k) => map.serialize_entry(k, v)?,
                        k => map.serialize_entry(&k.to_js_string(), v)?,
                    }
                }
                map.end()
            }
            Value::Ext(ty, data) => match self.date_time_value() {
                Some(t) => match js::date_to_iso(t) {
                    Some(iso) => s.serialize_str(&iso),
                    None => s.serialize_unit(),
                },
                None => {
                    let mut map = s.serialize_map(Some(2))?;
                    map.serialize_entry("type", ty)?;
                    map.serialize_entry("data", &Value::Bin(data.clone()))?;
                    map.end()
                }
            },
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

/// Builds a [`Value`] from any self-describing format, keeping map order.
struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(i64::try_from(v).map_or(Value::UInt(v), Value::Int))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Value, E> {
        Ok(Value::Bin(Bytes::copy_from_slice(v)))
    }
    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Value, E> {
        Ok(Value::Bin(v.into()))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        // Never trust a size hint for capacity beyond a small bound.
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
        while let Some((k, v)) = map.next_entry::<Value, Value>()? {
            entries.push((k, v));
        }
        Ok(Value::Map(entries))
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Str(s.to_owned())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Str(s)
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Bool(b)
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Value {
        Value::Int(i)
    }
}
impl From<i32> for Value {
    fn from(i: i32) -> Value {
        Value::Int(i64::from(i))
    }
}
impl From<u32> for Value {
    fn from(i: u32) -> Value {
        Value::Int(i64::from(i))
    }
}
impl From<u64> for Value {
    fn from(u: u64) -> Value {
        i64::try_from(u).map_or(Value::UInt(u), Value::Int)
    }
}
impl From<f64> for Value {
    fn from(f: f64) -> Value {
        Value::Float(f)
    }
}
impl From<Bytes> for Value {
    fn from(b: Bytes) -> Value {
        Value::Bin(b)
    }
}
impl From<Vec<Value>> for Value {
    fn from(items: Vec<Value>) -> Value {
        Value::Array(items)
    }
}
impl From<serde_json::Value> for Value {
    fn from(json: serde_json::Value) -> Value {
        Value::from_json(json)
    }
}
