//! Helpers shared by the integration test files (`mod support;` in each: every file under
//! `tests/` is its own crate, so not every file uses every helper).
#![allow(dead_code)]

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The reference `peer` server's command-line entry (installed by `npm ci` in `tests/js`).
pub const REFERENCE_CLI: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/js/node_modules/peer/dist/bin/peerjs.js"
);

/// Whether the reference server is installed.
pub fn reference_installed() -> bool {
    std::path::Path::new(REFERENCE_CLI).exists()
}

/// `node peerjs.js --port 0 --host 127.0.0.1` plus `extra` flags: the reference server on
/// an ephemeral loopback port.
pub fn reference_command(extra: &[&str]) -> Command {
    let mut c = Command::new("node");
    c.arg(REFERENCE_CLI)
        .args(["--port", "0", "--host", "127.0.0.1"])
        .args(extra)
        .env("PORT", "0");
    c
}

/// The port in a server's startup line: ours prints `listening on http(s)://HOST:PORT/…`,
/// the reference `… port: PORT, path: …`.
pub fn listening_port(line: &str) -> Option<u16> {
    let port = if let Some(rest) = line
        .strip_prefix("listening on http://")
        .or_else(|| line.strip_prefix("listening on https://"))
    {
        rest.split('/').next().and_then(|a| a.rsplit(':').next())
    } else {
        line.split("port: ")
            .nth(1)
            .and_then(|r| r.split(',').next())
    };
    port.and_then(|p| p.trim().parse().ok())
}

/// Spawns `cmd` (killed when the `Child` is dropped), waits up to `wait` for the line that
/// names its port, and keeps draining its stdout afterwards.
///
/// # Panics
/// If the process cannot start, exits before naming a port, or takes longer than `wait`.
pub async fn spawn_listening(mut cmd: Command, wait: Duration) -> (Child, u16) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the server starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
    let port = tokio::time::timeout(wait, async {
        while let Some(line) = lines.next_line().await.expect("server stdout") {
            if let Some(p) = listening_port(&line) {
                return p;
            }
        }
        panic!("the server exited before listening");
    })
    .await
    .expect("server ready in time");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, port)
}

#[test]
fn startup_lines_name_the_port() {
    assert_eq!(
        listening_port("listening on http://127.0.0.1:4321/p2p/"),
        Some(4321)
    );
    assert_eq!(listening_port("listening on https://[::1]:443/"), Some(443));
    assert_eq!(
        listening_port("Started PeerServer on ::, port: 9000, path: / (v. 1.0.2)"),
        Some(9000)
    );
    assert_eq!(listening_port("something else"), None);
}

/// Sends a request and reads its body, panicking on any failure (tests only).
pub trait Fetch {
    /// The body as text.
    fn text_ok(self) -> impl std::future::Future<Output = String> + Send;
    /// The body as JSON.
    fn json_ok(self) -> impl std::future::Future<Output = serde_json::Value> + Send;
}

impl Fetch for reqwest::RequestBuilder {
    async fn text_ok(self) -> String {
        let response = self.send().await.expect("request sent");
        response.text().await.expect("body read")
    }

    async fn json_ok(self) -> serde_json::Value {
        let response = self.send().await.expect("request sent");
        response.json().await.expect("JSON body")
    }
}

/// `ouroboros node`'s flags, parsed as the binary parses them.
#[derive(clap::Parser)]
struct NodeCli {
    #[command(flatten)]
    node: ouroboros::node::NodeArgs,
}

/// Starts a node on 127.0.0.1:0 with a temporary data dir and extra flags.
pub async fn start_node(extra: &[&str]) -> (ouroboros::node::Node, tempfile::TempDir) {
    start_node_in_ring(extra, None).await
}

/// [`start_node`] for a node of the ring with `secret` (two nodes of one ring; `None`: a
/// ring of its own).
pub async fn start_node_in_ring(
    extra: &[&str],
    secret: Option<&[u8]>,
) -> (ouroboros::node::Node, tempfile::TempDir) {
    ouroboros::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut argv = vec![
        "node",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--data-dir",
        dir.path().to_str().expect("utf-8 path"),
    ];
    argv.extend_from_slice(extra);
    let cli = <NodeCli as clap::Parser>::try_parse_from(argv).expect("flags parse");
    let node = match secret {
        Some(s) => {
            let secret = ouroboros::handoff::Secret::new(s.to_vec()).expect("a valid secret");
            ouroboros::node::Node::start_in_ring(cli.node, secret).await
        }
        None => ouroboros::node::Node::start(cli.node).await,
    }
    .expect("node starts");
    (node, dir)
}
