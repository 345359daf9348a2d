//! The fast path of [`super::parse`]: one pass over a frame that validates it as JSON and
//! picks out the top-level `type`, `dst` and `payload` values as raw text.
//!
//! It answers only for the usual shape (an object whose keys have no escapes, each of the
//! three keys at most once, nesting at most [`MAX_DEPTH`] deep) and returns `None` for
//! anything else, malformed input included, so that serde_json decides every unusual case
//! exactly as before. The grammar is serde_json's (RFC 8259, whitespace `' ' \t \n \r`, no
//! depth limit, no surrogate check inside skipped strings): whatever this accepts, serde_json
//! accepts with the same values. `wire::tests` checks that against serde_json on generated
//! frames.

/// Deepest nesting the fast path follows (a bit per level in a `u64`); deeper frames go to
/// serde_json.
pub(super) const MAX_DEPTH: u32 = 64;

/// The raw text of the three keys the server reads, each `None` when absent.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Fields<'a> {
    pub kind: Option<&'a str>,
    pub dst: Option<&'a str>,
    pub payload: Option<&'a str>,
}

/// Skims `text`; `None` when serde_json has to decide.
pub(super) fn skim(text: &str) -> Option<Fields<'_>> {
    let b = text.as_bytes();
    let mut fields = Fields::default();
    let mut i = ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        i += 1;
    } else {
        loop {
            if b.get(i) != Some(&b'"') {
                return None;
            }
            let key_start = i + 1;
            let key_end = plain_str_end(b, key_start)?;
            i = ws(b, key_end + 1);
            if b.get(i) != Some(&b':') {
                return None;
            }
            let start = ws(b, i + 1);
            i = value_end(b, start)?;
            let slot = match &b[key_start..key_end] {
                b"type" => Some(&mut fields.kind),
                b"dst" => Some(&mut fields.dst),
                b"payload" => Some(&mut fields.payload),
                _ => None, // skipped, like serde's unknown fields
            };
            // `start..i` lies between ASCII bytes, so it is on char boundaries.
            if let Some(slot) = slot
                && slot.replace(&text[start..i]).is_some()
            {
                return None; // a repeated key: serde_json refuses it
            }
            i = ws(b, i);
            match b.get(i) {
                Some(b',') => i = ws(b, i + 1),
                Some(b'}') => {
                    i += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    (ws(b, i) == b.len()).then_some(fields)
}

/// The index of the first byte at or after `i` that is not JSON whitespace.
fn ws(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\n' | b'\t' | b'\r') = b.get(i) {
        i += 1;
    }
    i
}

/// The end (exclusive) of the JSON value that starts at `i`, if it is well-formed and
/// nested at most [`MAX_DEPTH`] deep.
fn value_end(b: &[u8], mut i: usize) -> Option<usize> {
    // Bit `d` of `objects` says whether the container at depth `d + 1` is an object.
    let mut objects: u64 = 0;
    let mut depth: u32 = 0;
    loop {
        // A value at `i`.
        match *b.get(i)? {
            b'"' => i = str_end(b, i + 1)? + 1,
            b'-' | b'0'..=b'9' => i = number_end(b, i)?,
            b't' => i = literal_end(b, i, b"true")?,
            b'f' => i = literal_end(b, i, b"false")?,
            b'n' => i = literal_end(b, i, b"null")?,
            open @ (b'[' | b'{') => {
                if depth == MAX_DEPTH {
                    return None;
                }
                let is_object = open == b'{';
                objects = (objects << 1) | u64::from(is_object);
                depth += 1;
                i = ws(b, i + 1);
                let close = if is_object { b'}' } else { b']' };
                if b.get(i) == Some(&close) {
                    // Empty: closed below like any finished value.
                    objects >>= 1;
                    depth -= 1;
                    i += 1;
                } else {
                    if is_object {
                        i = key_then_colon(b, i)?;
                    }
                    continue;
                }
            }
            _ => return None,
        }
        // A value ended at `i`: close the containers it ends, or go on to the next element.
        loop {
            if depth == 0 {
                return Some(i);
            }
            let in_object = objects & 1 == 1;
            i = ws(b, i);
            match *b.get(i)? {
                b',' => {
                    i = ws(b, i + 1);
                    if in_object {
                        i = key_then_colon(b, i)?;
                    }
                    break;
                }
                b'}' if in_object => {}
                b']' if !in_object => {}
                _ => return None,
            }
            objects >>= 1;
            depth -= 1;
            i += 1;
        }
    }
}

/// At `i`: a key (any valid string) and its colon; the index of the value after it.
fn key_then_colon(b: &[u8], i: usize) -> Option<usize> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let i = ws(b, str_end(b, i + 1)? + 1);
    (b.get(i) == Some(&b':')).then(|| ws(b, i + 1))
}

/// `lit` at `i`; the index after it.
fn literal_end(b: &[u8], i: usize, lit: &[u8]) -> Option<usize> {
    b.get(i..i + lit.len())
        .filter(|s| *s == lit)
        .map(|_| i + lit.len())
}

/// A number at `i` (`-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`); the index after it.
fn number_end(b: &[u8], mut i: usize) -> Option<usize> {
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match *b.get(i)? {
        b'0' => {
            i += 1;
            if b.get(i).is_some_and(u8::is_ascii_digit) {
                return None; // one leading zero only
            }
        }
        b'1'..=b'9' => i = digits_end(b, i + 1),
        _ => return None,
    }
    if b.get(i) == Some(&b'.') {
        let end = digits_end(b, i + 1);
        if end == i + 1 {
            return None;
        }
        i = end;
    }
    if let Some(b'e' | b'E') = b.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = b.get(i) {
            i += 1;
        }
        let end = digits_end(b, i);
        if end == i {
            return None;
        }
        i = end;
    }
    Some(i)
}

fn digits_end(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    i
}

/// The index of the closing quote of a string whose body starts at `i`, if the body is
/// valid (no control characters; escapes `\" \\ \/ \b \f \n \r \t \uXXXX`).
fn str_end(b: &[u8], mut i: usize) -> Option<usize> {
    loop {
        i = special(b, i)?;
        match b[i] {
            b'"' => return Some(i),
            b'\\' => {
                i += 1;
                match *b.get(i)? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 1,
                    b'u' => {
                        let hex = b.get(i + 1..i + 5)?;
                        if !hex.iter().all(u8::is_ascii_hexdigit) {
                            return None;
                        }
                        i += 5;
                    }
                    _ => return None,
                }
            }
            _ => return None, // a control character
        }
    }
}

/// [`str_end`] for a key without escapes: `None` at the first backslash too.
fn plain_str_end(b: &[u8], i: usize) -> Option<usize> {
    let i = special(b, i)?;
    (b[i] == b'"').then_some(i)
}

/// The index of the first `"`, `\` or control character at or after `i`, eight bytes at a
/// time.
fn special(b: &[u8], mut i: usize) -> Option<usize> {
    const ONES: u64 = u64::MAX / 255;
    const HIGH: u64 = ONES * 0x80;
    while let Some(chunk) = b.get(i..i + 8) {
        let x = u64::from_le_bytes(chunk.try_into().ok()?);
        // A byte below 0x20, or equal to `"` or `\`, sets its high bit here (the classic
        // "has zero byte" test; false positives only above a true hit, and bytes >= 0x80
        // are masked out by `!x`).
        let quote = x ^ (ONES * u64::from(b'"'));
        let backslash = x ^ (ONES * u64::from(b'\\'));
        let hits =
            (x.wrapping_sub(ONES * 0x20) | quote.wrapping_sub(ONES) | backslash.wrapping_sub(ONES))
                & !x
                & HIGH;
        if hits != 0 {
            return Some(i + (hits.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    while let Some(&c) = b.get(i) {
        if c == b'"' || c == b'\\' || c < 0x20 {
            return Some(i);
        }
        i += 1;
    }
    None
}
