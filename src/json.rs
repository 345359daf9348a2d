//! JSON text written by hand, for the hot paths that build a message once per event
//! instead of going through `serde` (the relay's `ack`/`presence`/`history`/`direct`, the
//! signaling server's relayed frames, the snapshot writer).

/// Appends `s` to `out` as a JSON string literal, escaped exactly as `serde_json` and
/// JavaScript's `JSON.stringify` escape it (`"`, `\`, `\b \f \n \r \t`, other control
/// characters as lowercase `\u00XX`; nothing else).
pub fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if esc.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push_str("\\u00");
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 0xf) as usize] as char);
        } else {
            out.push_str(esc);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_serde_json_and_javascript() {
        let cases = [
            "",
            "plain",
            "a\"\\\n\u{1}é/",
            "\u{8}\u{c}\r\t\u{1f}\u{7f}",
            "\u{2028}",
        ];
        for s in cases {
            let mut out = String::new();
            push_json_str(&mut out, s);
            assert_eq!(out, serde_json::to_string(s).unwrap(), "{s:?}");
        }
        let mut out = String::new();
        push_json_str(&mut out, "a\"\\\n\u{1}é/");
        assert_eq!(out, r#""a\"\\\n\u0001é/""#);
    }
}
