//! ngrok: failure, fallback, and the opt-in online test.

use super::*;

async fn local_site() -> SocketAddr {
    let app = Router::new().route("/", get(|| async { "ouroboros local" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

async fn still_serves(addr: SocketAddr) {
    let body = tunnel::node_http_client_builder()
        .build()
        .unwrap()
        .get(format!("http://{addr}/"))
        .text_ok()
        .await;
    assert_eq!(body, "ouroboros local");
}

#[tokio::test]
async fn ngrok_unreachable_fails_fast_and_the_node_keeps_serving() {
    ouroboros::install_crypto_provider();
    let site = local_site().await;
    // A port nobody listens on: the session's TCP connect is refused.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let t = NgrokTunnel::new(
        Some("2fakeNgrokToken".into()),
        Some("x.ngrok-free.dev".into()),
        Duration::from_secs(10),
    )
    .with_server_addr(closed.to_string());
    let t0 = Instant::now();
    let (status, handle) = tunnel::establish(&t, site).await;
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "failed fast: {:?}",
        t0.elapsed()
    );
    assert!(handle.is_none());
    match &status {
        TunnelStatus::Failed { reason } => {
            assert!(reason.contains("ngrok session failed"), "{reason}");
            assert!(!reason.contains("2fakeNgrokToken"));
        }
        s => panic!("{s:?}"),
    }
    assert_eq!(serde_json::to_value(&status).unwrap()["state"], "failed");
    still_serves(site).await;
}

#[tokio::test]
async fn ngrok_silent_server_times_out_and_the_node_keeps_serving() {
    ouroboros::install_crypto_provider();
    let site = local_site().await;
    // Accepts TCP and never answers the TLS handshake.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = silent.accept().await {
            held.push(sock);
        }
    });
    let t = NgrokTunnel::new(
        Some("2fakeNgrokToken".into()),
        None,
        Duration::from_millis(300),
    )
    .with_server_addr(format!("localhost:{}", silent_addr.port()));
    let t0 = Instant::now();
    let (status, handle) = tunnel::establish(&t, site).await;
    let took = t0.elapsed();
    assert!(handle.is_none());
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(
        status,
        TunnelStatus::Failed {
            reason: "ngrok did not connect within 300ms".into()
        }
    );
    still_serves(site).await;
}

#[tokio::test]
async fn ngrok_default_ingress_offline_is_a_clean_failure() {
    // With no network (this machine) the real ingress lookup fails; online with a fake token,
    // authentication fails. Either way: Failed, no panic, no token in the reason.
    ouroboros::install_crypto_provider();
    let site = local_site().await;
    let t = NgrokTunnel::new(
        Some("2fakeNgrokToken_notreal".into()),
        None,
        Duration::from_secs(15),
    );
    let (status, _) = tunnel::establish(&t, site).await;
    match status {
        TunnelStatus::Failed { reason } => {
            assert!(!reason.contains("2fakeNgrokToken_notreal"), "{reason}")
        }
        s => panic!("a fake token cannot open a tunnel: {s:?}"),
    }
    still_serves(site).await;
}

#[tokio::test]
async fn ngrok_online_opt_in() {
    let Ok(token) = std::env::var("NGROK_AUTHTOKEN") else {
        eprintln!(
            "skipping ngrok_online_opt_in: set NGROK_AUTHTOKEN (and optionally NGROK_DOMAIN) to run it"
        );
        return;
    };
    ouroboros::install_crypto_provider();
    let site = local_site().await;
    let t = NgrokTunnel::new(
        Some(token),
        std::env::var("NGROK_DOMAIN").ok(),
        Duration::from_secs(30),
    );
    let (status, handle) = tunnel::establish(&t, site).await;
    let url = match &status {
        TunnelStatus::Up { url } => url.clone(),
        s => panic!("ngrok did not come up: {s:?}"),
    };
    let body = tunnel::node_http_client_builder()
        .build()
        .unwrap()
        .get(&url)
        .text_ok()
        .await;
    assert_eq!(body, "ouroboros local", "served through {url}");
    handle.unwrap().close().await;
}
