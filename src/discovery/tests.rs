use super::*;
use serde_json::{Value, json};
use std::time::{Duration, UNIX_EPOCH};

const SCHEMA: &str = include_str!("../../protocol/discovery.schema.json");

use fixtures::endpoint;

fn record(peer: &str, generation: u64) -> DiscoveryRecord {
    let start = UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
    DiscoveryRecord {
        expires_at: Some(start + Duration::from_secs(7200)),
        ..fixtures::record(peer, generation, 9000, start)
    }
}

/// Violations of `protocol/discovery.schema.json` (checked by the `jsonschema` crate, with
/// `format` asserted, so `date-time` fields are checked too).
fn violations(v: &Value) -> Vec<String> {
    let schema: Value = serde_json::from_str(SCHEMA).expect("schema is JSON");
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("the schema compiles");
    validator
        .iter_errors(v)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

#[test]
fn produced_records_match_the_schema() {
    let mut full = record("ouroboros-b", 4);
    full.tunnel_url = Some("https://ring.ngrok.app".into());
    full.relay_ws = Some("wss://ring.ngrok.app/relay".into());
    full.replicas = vec![crate::discovery::ReplicaNode {
        id: 2,
        url: "https://b.example:8443".into(),
        relay_ws: "wss://b.example:8443/relay".into(),
    }];
    full.signaling.push(SignalingEndpoint {
        host: "0.peerjs.com".into(),
        port: 443,
        path: "/".into(),
        key: "peerjs".into(),
        secure: true,
        peer_id: Some("ouroboros-moved1".into()),
    });
    full.previous = Some(PreviousNode {
        peer_id: "ouroboros-a".into(),
        signaling: vec![endpoint(9001)],
    });
    let mut forever = record("ouroboros-c", 0);
    forever.expires_at = None;
    for r in [record("ouroboros-a", 0), full, forever] {
        let v: Value = serde_json::from_str(&r.to_json_pretty()).unwrap();
        assert_eq!(violations(&v), Vec::<String>::new(), "{v}");
        // Round trip.
        assert_eq!(
            DiscoveryRecord::from_json(r.to_json_pretty().as_bytes()).unwrap(),
            r
        );
    }
}

#[test]
fn wire_shape_is_exact() {
    let v = serde_json::to_value(record("p", 2)).unwrap();
    assert_eq!(
        v,
        json!({"version":1,"peer_id":"p","generation":2,
               "signaling":[{"host":"127.0.0.1","port":9000,"path":"/","key":"peerjs","secure":false}],
               "started_at":"2026-11-18T11:06:40.123Z","expires_at":"2026-11-18T13:06:40.123Z"})
    );
}

#[test]
fn schema_checker_rejects_bad_records() {
    let good = serde_json::to_value(record("p", 1)).unwrap();
    type Mutation = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Mutation)> = vec![
        (
            "missing peer_id",
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("peer_id");
            }),
        ),
        (
            "negative generation",
            Box::new(|v| v["generation"] = json!(-1)),
        ),
        (
            "bad time",
            Box::new(|v| v["started_at"] = json!("yesterday")),
        ),
        ("port 0", Box::new(|v| v["signaling"][0]["port"] = json!(0))),
        ("extra field", Box::new(|v| v["secret"] = json!("x"))),
        ("version 2", Box::new(|v| v["version"] = json!(2))),
        ("no endpoints", Box::new(|v| v["signaling"] = json!([]))),
    ];
    for (name, mutate) in cases {
        let mut v = good.clone();
        mutate(&mut v);
        assert!(!violations(&v).is_empty(), "{name} passed the schema");
        assert!(
            DiscoveryRecord::from_json(v.to_string().as_bytes()).is_err() || name == "extra field",
            "{name} parsed"
        );
    }
}

#[test]
fn guard_orders_generations_and_peers() {
    let a3 = record("a", 3);
    assert!(check_replace(&a3, &record("b", 4)).is_ok());
    assert!(check_replace(&a3, &record("a", 3)).is_ok());
    assert_eq!(
        check_replace(&a3, &record("b", 3)),
        Err(StaleRecord::ForeignPeer {
            generation: 3,
            current_peer_id: "a".into()
        })
    );
    // Nodes of one replicated ring refresh each other's record.
    let ring = |peer: &str| {
        let mut r = record(peer, 0);
        r.replicas = vec![ReplicaNode {
            id: 1,
            url: "http://127.0.0.1:1".into(),
            relay_ws: "ws://127.0.0.1:1/relay".into(),
        }];
        r
    };
    assert!(check_replace(&ring("a"), &ring("b")).is_ok());
    assert!(check_replace(&record("a", 0), &ring("b")).is_err());
    assert!(check_replace(&ring("a"), &record("b", 0)).is_err());
    assert_eq!(
        check_replace(&a3, &record("a", 2)),
        Err(StaleRecord::OlderGeneration {
            current: 3,
            ours: 2
        })
    );
}

#[test]
fn local_publisher_writes_atomically_and_refuses_stale() {
    let dir = tempfile::tempdir().unwrap();
    let p = LocalPublisher::new(dir.path().join("data"));
    assert_eq!(p.current_blocking().unwrap(), None);
    p.publish_blocking(&record("a", 1)).unwrap();
    p.publish_blocking(&record("a", 1)).unwrap(); // refresh by the same node
    p.publish_blocking(&record("b", 2)).unwrap();
    let err = p.publish_blocking(&record("a", 1)).unwrap_err();
    assert!(err.is_stale(), "{err}");
    let err = p.publish_blocking(&record("c", 2)).unwrap_err();
    assert!(err.is_stale(), "{err}");
    assert_eq!(p.current_blocking().unwrap().unwrap().peer_id, "b");
    // No temp files left behind.
    let names: Vec<String> = std::fs::read_dir(dir.path().join("data"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.contains(".tmp-")), "{names:?}");
    // A corrupt record is replaced rather than blocking the ring forever.
    std::fs::write(p.path(), b"{not json").unwrap();
    p.publish_blocking(&record("d", 3)).unwrap();
    assert_eq!(p.current_blocking().unwrap().unwrap().generation, 3);
}

#[tokio::test]
async fn racing_publishers_of_one_generation_one_wins() {
    let dir = tempfile::tempdir().unwrap();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let p = LocalPublisher::new(dir.path());
        tasks.push(tokio::spawn(async move {
            p.publish(&record(&format!("peer-{i}"), 5)).await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            Err(e) => assert!(e.is_stale(), "{e}"),
        }
    }
    assert_eq!(ok, 1);
}

#[test]
fn a_signed_record_verifies_and_a_tampered_one_does_not() {
    let keys = RingKeys::from_secret(b"the ring secret of the record test");
    let pinned = RingPublicKey::parse(keys.public_key()).unwrap();
    let mut r = record("ouroboros-a", 3);
    r.ice_servers = Some(vec![]);
    r.relay_ws = Some("ws://127.0.0.1:9000/relay".into());
    r.sign(&keys);
    assert!(violations(&serde_json::to_value(&r).unwrap()).is_empty());
    // What a publisher writes and a client reads back still verifies.
    let read = DiscoveryRecord::from_json(r.to_json_pretty().as_bytes()).unwrap();
    assert_eq!(read.verify(Some(&pinned)), Ok(Some(pinned.clone())));
    assert_eq!(read.verify(None), Ok(Some(pinned.clone())));
    // Tampered: refused, pinned or not.
    let mut t = read.clone();
    t.peer_id = "ouroboros-impostor".into();
    assert_eq!(t.verify(Some(&pinned)), Err(SignatureError::Invalid));
    assert_eq!(t.verify(None), Err(SignatureError::Invalid));
    // Re-signed by another ring: not the pinned key.
    let other = RingKeys::from_secret(b"an impostor's ring secret");
    t.sign(&other);
    assert_eq!(t.verify(Some(&pinned)), Err(SignatureError::OtherKey));
    // Unsigned: fine without a pin, refused with one.
    let plain = record("ouroboros-a", 3);
    assert_eq!(plain.verify(None), Ok(None));
    assert_eq!(plain.verify(Some(&pinned)), Err(SignatureError::Missing));
}
