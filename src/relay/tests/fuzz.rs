//! Regressions found by the fuzz targets (`fuzz/`, `fuzz/RESULTS.md`): each test is the
//! crashing input, reduced.

use super::*;

/// Restores `json` at once and piece by piece; both must agree.
fn restore_both(json: &str) -> Result<Relay, RelayError> {
    restore_bytes(json.as_bytes())
}

fn restore_bytes(json: &[u8]) -> Result<Relay, RelayError> {
    let at_once =
        Snapshot::from_json(json).and_then(|s| Relay::restore(config(), s, Instant::now()));
    let mut streaming = StreamingRestore::new(config(), Instant::now());
    let streamed = json
        .chunks(5)
        .try_for_each(|p| streaming.feed(p))
        .and_then(|()| streaming.finish());
    assert_eq!(
        at_once.is_ok(),
        streamed.is_ok(),
        "{}",
        String::from_utf8_lossy(json)
    );
    at_once
}

/// `snapshot_restore`: a room with messages but a head not above the seq floor was
/// restored, and the restored relay's own snapshot then left that room out but kept its
/// messages ("message for unlisted room lobby"): a successor could not restore it.
#[test]
fn a_room_with_messages_below_the_seq_floor_restores_and_so_does_its_own_snapshot() {
    // Snapshots list every room that holds messages (not only rooms above the floor), so
    // such a room survives the next snapshot too.
    let below = r#"{"version":1,"node":"n","generation":2,"seq_floor":5,
        "rooms":[{"name":"lobby","head":3,"evicted_before":2}],
        "messages":[{"room":"lobby","seq":2,"from":"a","ts":1,"id":"m2","body":1}]}"#;
    let r = restore_both(below).unwrap();
    let own = String::from_utf8(r.export_snapshot().to_json()).unwrap();
    restore_both(&own).unwrap();
}

/// A head at `u64::MAX` restored, and the next seq (`head + 1`, on publish, replication or
/// the next restore) overflowed.
#[test]
fn heads_and_floors_above_the_limit_are_refused() {
    let max = u64::MAX;
    let head = format!(
        r#"{{"version":1,"node":"n","generation":2,"seq_floor":0,
        "rooms":[{{"name":"r","head":{max},"evicted_before":{max}}}],
        "messages":[{{"room":"r","seq":{max},"from":"a","ts":1,"id":null,"body":1}}]}}"#
    );
    assert!(
        restore_both(&head)
            .unwrap_err()
            .to_string()
            .contains("above")
    );
    let floor = format!(
        r#"{{"version":1,"node":"n","generation":2,"seq_floor":{max},"rooms":[],"messages":[]}}"#
    );
    assert!(
        restore_both(&floor)
            .unwrap_err()
            .to_string()
            .contains("above")
    );
    let at_limit = format!(
        r#"{{"version":1,"node":"n","generation":2,"seq_floor":0,
        "rooms":[{{"name":"r","head":{MAX_HEAD},"evicted_before":{}}}],"messages":[]}}"#,
        MAX_HEAD + 1
    );
    // At the limit it restores, and the next seqs and a crash-restore gap do not overflow.
    let mut r = restore_both(&at_limit).unwrap();
    r.open_gap(10_000);
    assert_eq!(r.high_water()["r"], MAX_HEAD + 10_000);
}

/// `snapshot_restore`: a byte that is not UTF-8 inside a message body in the canonical form
/// (`to_json`'s) panicked the decoder ("checked piece by piece"): the fast path does not
/// check the body's strings.
#[test]
fn a_message_that_is_not_utf8_is_refused() {
    let mut bytes = br#"{"version":1,"node":"n","generation":2,"seq_floor":0,"rooms":[{"name":"lobby","head":2,"evicted_before":2}],"messages":[{"room":"lobby","seq":2,"from":"alice","ts":1,"id":"m2","body":{"text":"?i"}}]}"#.to_vec();
    let at = bytes.iter().position(|&b| b == b'?').unwrap();
    bytes[at] = 0x94;
    let e = restore_bytes(&bytes).unwrap_err().to_string();
    assert!(e.contains("not UTF-8"), "{e}");
    bytes[at] = b'x';
    restore_bytes(&bytes).unwrap();
}

/// Decodes `bytes` fed as the pieces `sizes` (cycled), as a successor does.
fn decode_in_pieces(bytes: &[u8], sizes: &[usize]) -> Result<Snapshot, RelayError> {
    let mut d = SnapshotDecoder::new();
    let mut header = None;
    let mut messages = Vec::new();
    let mut rest = bytes;
    for &size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (piece, after) = rest.split_at(size.min(rest.len()));
        rest = after;
        d.feed(piece)?;
        header = header.or_else(|| d.take_header());
        messages.extend(d.take_messages());
    }
    let (h, tail) = d.finish()?;
    messages.extend(tail);
    Ok(Snapshot::from_parts(
        header.or(h).expect("a header"),
        messages,
    ))
}

/// `snapshot_restore` (`fuzz/regressions/snapshot_restore/crash-f1ff…`): a message body
/// `2.121979268e-314` cut by the end of a piece right after its `e-` made the decoder
/// refuse a snapshot that decodes at once. serde_json reports a number it skips (the body
/// is a `RawValue`, the canonical scan skips it as `IgnoredAny`) cut after `-`, `.`, `e`,
/// `e+` or `e-` as an invalid number, not as the end of the input, so the piece looked
/// malformed instead of incomplete.
#[test]
fn a_number_cut_by_the_end_of_a_piece_waits_for_the_next_piece() {
    // The fuzzer's input, decoded from the crash file: pieces of 49, 44, 34, 110 bytes;
    // the first ends with `"body":2.121979268e-`.
    let crash = br#"{"generation":3,"messages":[{"body":2.121979268e-314,"from":"eq","id":",\"","room":"global","seq":6,"ts":4189036426344293983}],"node":"n","rooms":[{"evicted_before":4,"head":3,"name":"r\u00e9"}],"version":0}"#;
    let at_once = Snapshot::from_json(crash).unwrap();
    assert_eq!(
        decode_in_pieces(crash, &[49, 44, 34, 110]).unwrap(),
        at_once
    );

    // Every number form a body or an unknown field can take, canonical (`to_json`'s
    // form, the fast path) and not, cut at every byte.
    let numbers = ["-1", "-0.5", "2.5e-7", "1E+30", "1e5", "0.25", "-3e-2", "7"];
    let mut docs = Vec::new();
    for n in numbers {
        docs.push(format!(
            r#"{{"version":1,"node":"n","generation":2,"seq_floor":0,"rooms":[{{"name":"lobby","head":2,"evicted_before":1}}],"messages":[{{"room":"lobby","seq":1,"from":"a","ts":1,"id":null,"body":{n}}},{{"room":"lobby","seq":2,"from":"a","ts":2,"id":"m","body":[{n},{{"x":{n}}}]}}]}}"#
        ));
        docs.push(format!(
            "{{\"extra\": {n},\n \"version\":1, \"node\":\"n\", \"generation\":2,\n \"rooms\":[{{\"name\":\"lobby\",\"head\":2,\"evicted_before\":2}}],\n \"messages\":[ {{\"seq\":2, \"room\":\"lobby\", \"from\":\"a\", \"ts\":2, \"id\":null, \"body\":{n} }} ]}}"
        ));
    }
    for doc in &docs {
        let bytes = doc.as_bytes();
        let at_once = Snapshot::from_json(bytes).unwrap();
        for cut in 1..bytes.len() {
            let two = decode_in_pieces(bytes, &[cut, bytes.len()]);
            assert_eq!(two.as_ref().ok(), Some(&at_once), "cut at {cut}: {doc}");
        }
        for size in [1, 2, 3] {
            assert_eq!(decode_in_pieces(bytes, &[size]).unwrap(), at_once, "{doc}");
        }
        restore_bytes(bytes).unwrap();
    }

    // Still refused: an invalid number is invalid whatever the pieces.
    for bad in ["2.5e-x", "1.}", "-}", "1e"] {
        let doc = format!(
            r#"{{"version":1,"node":"n","generation":2,"rooms":[{{"name":"lobby","head":1,"evicted_before":1}}],"messages":[{{"room":"lobby","seq":1,"from":"a","ts":1,"id":null,"body":{bad}}}]}}"#
        );
        let bytes = doc.as_bytes();
        assert!(Snapshot::from_json(bytes).is_err(), "{doc}");
        for cut in 1..bytes.len() {
            assert!(
                decode_in_pieces(bytes, &[cut, bytes.len()]).is_err(),
                "cut at {cut}: {doc}"
            );
        }
    }
}

/// `snapshot_restore`: after a crash-restore gap (`seq_floor` > 0, seqs may skip), a room
/// whose oldest message the budget evicted on restore had the mark after it (3) below its
/// first stored message (5); restoring that relay's own snapshot raised the mark to 5 (what
/// a message stored into an empty log does), so the successor's state differed from the
/// snapshot it was handed.
#[test]
fn a_room_evicted_across_a_gap_keeps_its_eviction_mark_through_a_restore() {
    let mark = |r: &Relay| {
        let s = r.export_snapshot();
        (s.rooms[0].evicted_before, s.messages.len())
    };
    // The fuzzer's case: the budget holds one of the two messages.
    let big = "x".repeat(1200);
    let json = format!(
        r#"{{"version":1,"node":"n","generation":3,"seq_floor":5,
        "rooms":[{{"name":"global","head":5,"evicted_before":1}}],
        "messages":[{{"room":"global","seq":2,"from":"a","ts":1,"id":null,"body":"{big}"}},
                    {{"room":"global","seq":5,"from":"a","ts":2,"id":null,"body":"{big}"}}]}}"#
    );
    let mut small = config();
    small.memory_budget = 2048;
    let restore = |bytes: &[u8]| {
        let s = Snapshot::from_json(bytes).unwrap();
        Relay::restore(small.clone(), s, Instant::now()).unwrap()
    };
    let first = restore(json.as_bytes());
    assert_eq!(mark(&first), (3, 1), "seq 2 evicted, the mark after it");
    let own = first.export_snapshot().to_json();
    let again = restore(&own);
    assert_eq!(mark(&again), (3, 1));
    assert_eq!(again.export_snapshot().to_json(), own);

    // The same state as a snapshot restores as it is, at once and streaming.
    let stated = r#"{"version":1,"node":"n","generation":3,"seq_floor":5,
        "rooms":[{"name":"global","head":5,"evicted_before":3}],
        "messages":[{"room":"global","seq":5,"from":"a","ts":2,"id":null,"body":1}]}"#;
    let r = restore_both(stated).unwrap();
    assert_eq!(mark(&r), (3, 1));
    let own = r.export_snapshot().to_json();
    assert_eq!(
        restore_bytes(&own).unwrap().export_snapshot().to_json(),
        own
    );
}

/// `relay_messages`: a body nested deeper than serde_json reads (128) but within what the
/// binary codecs accept (256) was stored and sent on; the objects carrying it (`msg`, a
/// `history` page three levels deeper, the snapshot) were JSON that serde_json refuses
/// ("recursion limit exceeded"): the Rust client could not read them, nor a successor the
/// snapshot. Bodies are now refused beyond `MAX_BODY_DEPTH` (64).
#[test]
fn a_body_nested_deeper_than_the_limit_is_refused() {
    let nest = |n: usize| (0..n).fold(json!(1), |v, _| json!([v]));
    let mut h = Harness::new(config());
    h.open_relay(1, "p1", Value::Null);
    h.send(1, json!({"op":"join","room":"r"}));
    for depth in [MAX_BODY_DEPTH + 1, 126, 200] {
        h.check_error(
            1,
            json!({"op":"publish","room":"r","id":"deep","body":nest(depth)}),
            "too_large",
            json!("deep"),
        );
        h.check_error(
            1,
            json!({"op":"direct","to":"p1","body":{"x":nest(depth)}}),
            "too_large",
            json!("direct"),
        );
    }
    // At the limit it is stored, and every object carrying it reads back with serde_json
    // (the harness parses each one): the `msg`, a `history` page, the snapshot.
    h.publish(1, "r", "ok", nest(MAX_BODY_DEPTH));
    let page = h.send(1, json!({"op":"history","room":"r"}));
    assert_eq!(page.len(), 1, "{page:?}");
    let snapshot = h.relay.export_snapshot().to_json();
    restore_bytes(&snapshot).unwrap();
}
