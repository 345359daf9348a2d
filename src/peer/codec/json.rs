//! The `json` serialization: `JSON.stringify` output as UTF-8 in a binary frame.
//!
//! Decoding follows `JSON.parse(new TextDecoder().decode(data))`: a leading UTF-8 BOM is
//! dropped and invalid UTF-8 becomes U+FFFD. Text frames (peerjs ≤ 1.4) are accepted too.
//! The number of values per message is bounded by `DecoderLimits::max_values`; nesting by
//! serde_json's limit (128).

use super::{CodecError, DecoderLimits, Value};
use bytes::Bytes;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use std::cell::Cell;
use std::fmt;

/// `JSON.stringify(value)` as bytes (see the `value` module docs for the mapping).
pub(crate) fn encode(value: &Value) -> Result<Vec<u8>, CodecError> {
    Ok(serde_json::to_vec(value)?)
}

/// Parses one JSON message.
pub(crate) fn decode(bytes: &[u8], limits: &DecoderLimits) -> Result<Value, CodecError> {
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let text = String::from_utf8_lossy(bytes);
    let count = Cell::new(0);
    let seed = CountedValue {
        count: &count,
        max: limits.max_values,
    };
    let mut de = serde_json::Deserializer::from_str(&text);
    let value = seed.deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// Deserializes a [`Value`] while counting values against a limit.
#[derive(Clone, Copy)]
struct CountedValue<'a> {
    count: &'a Cell<usize>,
    max: usize,
}

impl CountedValue<'_> {
    fn bump<E: de::Error>(&self) -> Result<(), E> {
        self.count.set(self.count.get() + 1);
        if self.count.get() > self.max {
            return Err(E::custom(format!(
                "more than {} values in one message",
                self.max
            )));
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for CountedValue<'_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for CountedValue<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        self.bump()?;
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        self.bump()?;
        Ok(Value::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        self.bump()?;
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        self.bump()?;
        Ok(Value::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.bump()?;
        Ok(Value::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        self.bump()?;
        Ok(Value::Str(v))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Value, E> {
        self.bump()?;
        Ok(Value::Bin(Bytes::copy_from_slice(v)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.bump()?;
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.bump()?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.bump()?;
        let mut entries = Vec::new();
        while let Some(k) = map.next_key_seed(self)? {
            let v = map.next_value_seed(self)?;
            entries.push((k, v));
        }
        Ok(Value::Map(entries))
    }
}
