//! Identifiers every protocol of the crate shares: connection ids, and the two peer-id
//! rules (what a signaling server accepts, and what the peerjs client library accepts).

/// Identifies one connection (a WebSocket of the signaling server, a DataConnection of the
/// relay); assigned by the driver, unique while it is open and never reused by a driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Longest id or token the signaling server accepts, in bytes.
pub const MAX_ID_LEN: usize = 256;

/// The signaling server's rule for a client id, token or destination: at most
/// [`MAX_ID_LEN`] bytes, no control characters. (The reference `peer` server accepts any
/// string; this bound is one of our documented differences, `protocol/signaling.md`.)
pub fn valid_id(id: &str) -> bool {
    id.len() <= MAX_ID_LEN && !id.chars().any(char::is_control)
}

/// The peerjs client library's rule for a peer id it may register:
/// `^[A-Za-z0-9]+(?:[ _-][A-Za-z0-9]+)*$`. Stricter than [`valid_id`] in its characters;
/// the ids this crate chooses for itself follow it, so browsers can dial them.
pub fn is_peerjs_id(id: &str) -> bool {
    let b = id.as_bytes();
    if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    let mut prev_sep = false;
    for &c in b {
        if c.is_ascii_alphanumeric() {
            prev_sep = false;
        } else if matches!(c, b' ' | b'_' | b'-') {
            if prev_sep {
                return false;
            }
            prev_sep = true;
        } else {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signaling_ids() {
        assert!(valid_id("abc-123"));
        assert!(valid_id("a.b/c é"));
        assert!(!valid_id(&"x".repeat(257)));
        assert!(valid_id(&"x".repeat(256)));
        assert!(!valid_id("a\u{7}b"));
    }

    #[test]
    fn peerjs_ids() {
        for ok in ["a", "abc", "a-b", "a_b c", "A1-2_3", "0"] {
            assert!(is_peerjs_id(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "a--b", "a b!", "é", "a__b", " a"] {
            assert!(!is_peerjs_id(bad), "{bad}");
        }
    }
}
