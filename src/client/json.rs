//! Conversions between PeerJS [`Value`]s and JSON, the relay protocol's data model.

use crate::peer::Value;
use serde_json::Value as Json;

/// Converts a decoded PeerJS value to JSON. `undefined` becomes `null`, binary data an
/// array of byte values, non-string map keys their JSON text, non-finite floats `null`.
pub fn value_to_json(v: Value) -> Json {
    match v {
        Value::Null | Value::Undefined => Json::Null,
        Value::Bool(b) => Json::Bool(b),
        Value::Int(i) => Json::from(i),
        Value::UInt(u) => Json::from(u),
        Value::Float(f) => serde_json::Number::from_f64(f)
            .map(Json::Number)
            .unwrap_or(Json::Null),
        Value::Str(s) => Json::String(s),
        Value::Bin(b) => Json::Array(b.iter().map(|&x| Json::from(x)).collect()),
        Value::Array(a) => Json::Array(a.into_iter().map(value_to_json).collect()),
        Value::Map(m) => Json::Object(
            m.into_iter()
                .map(|(k, v)| {
                    let key = match k {
                        Value::Str(s) => s,
                        other => value_to_json(other).to_string(),
                    };
                    (key, value_to_json(v))
                })
                .collect(),
        ),
    }
}

/// Converts JSON to a PeerJS value (integers stay integers, objects keep their order).
pub fn json_to_value(j: &Json) -> Value {
    match j {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Int(i)
            } else if let Some(u) = n.as_u64() {
                Value::UInt(u)
            } else {
                Value::Float(n.as_f64().unwrap_or(0.0))
            }
        }
        Json::String(s) => Value::Str(s.clone()),
        Json::Array(a) => Value::Array(a.iter().map(json_to_value).collect()),
        Json::Object(o) => Value::Map(
            o.iter()
                .map(|(k, v)| (Value::Str(k.clone()), json_to_value(v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trip() {
        let j = json!({"op":"publish","room":"r","id":"x","body":{"text":"hi","n":[1,-2,3.5,null,true]}});
        assert_eq!(value_to_json(json_to_value(&j)), j);
        assert_eq!(value_to_json(Value::Undefined), Json::Null);
        assert_eq!(
            value_to_json(Value::Bin(bytes::Bytes::from_static(&[1, 2]))),
            json!([1, 2])
        );
    }
}
