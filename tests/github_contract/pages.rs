//! The Pages publisher (contents and dispatch modes) and its generation guard.

use super::*;

fn record(peer: &str, generation: u64) -> DiscoveryRecord {
    DiscoveryRecord {
        ring_key: None,
        sig: None,
        version: 1,
        peer_id: peer.into(),
        generation,
        signaling: vec![endpoint("0.peerjs.com")],
        ice_servers: None,
        tunnel_url: Some("https://abc.ngrok-free.dev".into()),
        relay_ws: None,
        started_at: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        expires_at: Some(UNIX_EPOCH + Duration::from_secs(1_800_007_200)),
        previous: None,
        ended: None,
        replicas: Vec::new(),
    }
}

fn contents_publisher(s: &Server) -> PagesPublisher {
    PagesPublisher::new(
        s.client(),
        PagesMode::Contents {
            branch: "gh-pages".into(),
            path: "ouroboros.json".into(),
        },
    )
    .unwrap()
}

fn published(s: &Server) -> DiscoveryRecord {
    let g = s.g();
    DiscoveryRecord::from_json(&g.files[&("gh-pages".to_string(), "ouroboros.json".to_string())].0)
        .unwrap()
}

#[tokio::test]
async fn contents_publisher_writes_and_guards_generations() {
    let s = Server::start().await;
    let p = contents_publisher(&s);
    assert_eq!(p.current().await.unwrap(), None);
    assert!(matches!(
        p.publish_record(&record("a", 1)).await.unwrap(),
        PublishOutcome::Committed { .. }
    ));
    assert_eq!(published(&s), record("a", 1));
    assert_eq!(
        p.publish_record(&record("a", 1)).await.unwrap(),
        PublishOutcome::Unchanged
    );
    let mut refreshed = record("a", 1);
    refreshed.tunnel_url = None;
    p.publish(&refreshed).await.unwrap();
    p.publish(&record("b", 2)).await.unwrap();
    assert_eq!(p.current().await.unwrap(), Some(record("b", 2)));
    // A stale node cannot go back, and another peer cannot take the same generation.
    let e = p.publish(&record("a", 1)).await.unwrap_err();
    assert!(
        matches!(
            e,
            DiscoveryError::Stale(StaleRecord::OlderGeneration {
                current: 2,
                ours: 1
            })
        ),
        "{e:?}"
    );
    let e = p.publish(&record("x", 2)).await.unwrap_err();
    assert!(
        matches!(e, DiscoveryError::Stale(StaleRecord::ForeignPeer { .. })),
        "{e:?}"
    );
    assert_eq!(published(&s), record("b", 2));
    // A seed file that is not a record is replaced.
    {
        let mut g = s.g();
        let seed = b"{\"0\":\"null\"}".to_vec();
        let sha = blob_sha(&seed);
        g.files
            .insert(("gh-pages".into(), "ouroboros.json".into()), (seed, sha));
    }
    p.publish(&record("c", 3)).await.unwrap();
    assert_eq!(published(&s), record("c", 3));
}

#[tokio::test]
async fn contents_publisher_rechecks_the_guard_after_a_conflict() {
    let s = Server::start().await;
    let p = contents_publisher(&s);
    p.publish(&record("a", 1)).await.unwrap();
    // Another writer commits an unrelated change first: we re-read and win.
    s.g().race_puts.push_back(
        record("a", 1)
            .to_json_pretty()
            .replace("abc.ngrok", "zzz.ngrok")
            .into_bytes(),
    );
    p.publish(&record("b", 2)).await.unwrap();
    assert_eq!(published(&s), record("b", 2));
    // The racing writer is generation 4: after the conflict, the re-read refuses our 3.
    s.g()
        .race_puts
        .push_back(record("d", 4).to_json_pretty().into_bytes());
    let e = p.publish(&record("c", 3)).await.unwrap_err();
    assert!(
        matches!(
            e,
            DiscoveryError::Stale(StaleRecord::OlderGeneration {
                current: 4,
                ours: 3
            })
        ),
        "{e:?}"
    );
    assert_eq!(published(&s), record("d", 4));
}

#[tokio::test]
async fn dispatch_publisher_deploys_through_static_yml_and_guards() {
    let s = Server::start().await;
    let url = url::Url::parse(&format!("{}/pages/ouroboros.json", s.url())).unwrap();
    let p = PagesPublisher::new(
        s.client(),
        PagesMode::Dispatch {
            workflow: "static.yml".into(),
            git_ref: "main".into(),
            record_url: Some(url),
        },
    )
    .unwrap();
    assert_eq!(
        p.current().await.unwrap(),
        None,
        "nothing deployed yet (404)"
    );
    let out = p.publish_record(&record("a", 1)).await.unwrap();
    assert!(
        matches!(out, PublishOutcome::Dispatched { run: Some(_) }),
        "{out:?}"
    );
    assert_eq!(p.current().await.unwrap(), Some(record("a", 1)));
    p.publish(&record("b", 2)).await.unwrap();
    let e = p.publish(&record("a", 1)).await.unwrap_err();
    assert!(e.is_stale(), "{e:?}");
    let g = s.g();
    assert_eq!(
        g.dispatches.len(),
        2,
        "the stale record was never dispatched"
    );
    let (wf, body) = &g.dispatches[1];
    assert_eq!(wf, "static.yml");
    assert_eq!(
        body["inputs"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["record"]
    );
    let sent =
        DiscoveryRecord::from_json(body["inputs"]["record"].as_str().unwrap().as_bytes()).unwrap();
    assert_eq!(sent, record("b", 2));
    assert!(
        !g.pages_reads.is_empty() && g.pages_reads.iter().all(|t| t.is_some()),
        "every read has ?t="
    );
    // Reads of the public record send the ngrok/skip header and our User-Agent.
    let read = g
        .seen
        .iter()
        .find(|r| r.path == "/pages/ouroboros.json")
        .unwrap();
    assert_eq!(read.headers[SKIP_BROWSER_WARNING_HEADER], "1");
    assert!(
        read.headers.get("authorization").is_none(),
        "the token never goes to Pages"
    );
}
