//! `ouroboros replica`: one member of a replicated relay log as its own process, serving the
//! members' HTTP calls (`replica::ReplicaService`) on its own port. The building block of the
//! replicated ring (issue 16): today it stores and orders messages with a majority; the
//! relay's WebSocket and DataChannel clients do not reach it yet (`protocol/replication.md`).
//!
//! A member either starts a new ring as its only voter (`--bootstrap`) or joins a running one
//! through any of its members (`--join ID=URL`, repeatable): the leader adds it as a learner,
//! waits for it to catch up and makes it a voter. Removing a member is a `remove` call to any
//! member (`protocol/replication.md`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use crate::handoff::{SECRET_ENV, Secret};
use crate::replica::{
    Answer, CallFailure, HttpTransport, JoinRequest, MAX_BODY_BYTES, NodeAddr, NodeId, OPERATOR,
    Outcome, PATH_PREFIX, Replica, ReplicaConfig, ReplicaService, RpcKey,
};

/// `ouroboros replica`'s flags.
#[derive(clap::Args, Debug, Clone)]
pub struct ReplicaArgs {
    /// This member's id: 1 or more, never reused in one ring (a restarted member is a new one).
    #[arg(long)]
    pub id: NodeId,
    /// The address to serve the members' calls on; calls to the other members leave from its
    /// IP address too, unless it is 0.0.0.0 or [::].
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// The base URL the other members reach this one at (default: `http://` + the bound
    /// address).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Start a new ring with this member as its only voter.
    #[arg(long, conflicts_with = "join")]
    pub bootstrap: bool,
    /// Join a running ring through this member (`ID=URL`); repeat it to name several, tried
    /// in turn until one answers.
    #[arg(long, value_parser = parse_contact)]
    pub join: Vec<(NodeId, String)>,
    /// How long to keep trying to join before giving up.
    #[arg(long, default_value = "60s", value_parser = crate::lifecycle::parse_duration)]
    pub join_timeout: Duration,
    /// The leader's heartbeat interval. openraft also bounds each replication call by it, so
    /// it must exceed the round trip between members under load.
    #[arg(long, default_value = "250ms", value_parser = crate::lifecycle::parse_duration)]
    pub heartbeat: Duration,
    /// The shortest election timeout (the longest is twice it).
    #[arg(long, default_value = "1s", value_parser = crate::lifecycle::parse_duration)]
    pub election_timeout: Duration,
    /// How long a publish waits to be committed on a majority.
    #[arg(long, default_value = "5s", value_parser = crate::lifecycle::parse_duration)]
    pub write_timeout: Duration,
}

/// `ID=URL`.
fn parse_contact(s: &str) -> Result<(NodeId, String), String> {
    let (id, url) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected ID=URL"))?;
    let id = id
        .trim()
        .parse::<NodeId>()
        .map_err(|e| format!("{id:?}: not a member id: {e}"))?;
    if id == OPERATOR {
        return Err("member id 0 is reserved".into());
    }
    let url = url.trim().trim_end_matches('/');
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!("{url:?}: expected an http:// or https:// URL"));
    }
    Ok((id, url.to_owned()))
}

/// The axum routes of a member's calls: `POST /replica/v1/{call}`.
pub fn routes(service: ReplicaService) -> Router {
    Router::new()
        .route(&format!("{PATH_PREFIX}{{call}}"), post(handle))
        .with_state(service)
}

async fn handle(
    State(service): State<ReplicaService>,
    Path(call): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    // The headers first: the body (up to 32 MiB) is read only for a request that may be genuine.
    let checked = match service.check_headers(&call, &header) {
        Ok(checked) => checked,
        Err(answer) => return respond(answer),
    };
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
        return respond(Answer::too_large());
    };
    respond(service.handle_checked(checked, &body).await)
}

fn respond(answer: Answer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        answer.body,
    )
        .into_response()
}

/// Runs one member until `shutdown` resolves.
///
/// # Errors
/// No secret in [`SECRET_ENV`], a port that cannot be bound, a configuration openraft
/// refuses, or a join that did not succeed within `--join-timeout`.
pub async fn run(
    args: ReplicaArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if args.id == OPERATOR {
        bail!("--id 0 is reserved (an operator's calls); use 1 or more");
    }
    if !args.bootstrap && args.join.is_empty() {
        bail!("give --bootstrap (a new ring) or --join ID=URL (a running one)");
    }
    let secret = Secret::from_env()?
        .with_context(|| format!("{SECRET_ENV} must hold the ring's shared secret"))?;
    let key = Arc::new(RpcKey::from_secret(secret.expose()));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("bind {}", args.listen))?;
    let bound = listener.local_addr()?;
    let advertise = args
        .advertise
        .clone()
        .unwrap_or_else(|| format!("http://{bound}"));
    // Calls to the other members leave from the address this member listens on (when it is
    // one address), so that they come from where the membership says this member is.
    let mut http = crate::tunnel::node_http_client_builder();
    if !bound.ip().is_unspecified() {
        http = http.local_address(bound.ip());
    }
    let http = http.build().context("HTTP client")?;
    let transport = Arc::new(HttpTransport::new(
        args.id,
        http,
        Arc::clone(&key),
        Duration::from_secs(10),
    ));
    let config = ReplicaConfig {
        heartbeat: args.heartbeat,
        election_timeout_min: args.election_timeout,
        election_timeout_max: args.election_timeout * 2,
        write_timeout: args.write_timeout,
        ..ReplicaConfig::default()
    };
    let replica = Replica::start(args.id, &config, Arc::clone(&transport)).await?;
    let service = ReplicaService::new(replica.clone(), key, Arc::clone(&transport));
    let app = routes(service);
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    });
    // The line tests and scripts wait for (stdout, one line).
    println!("replica member {} listening on {advertise}", args.id);
    if args.bootstrap {
        replica
            .initialize(
                [(
                    args.id,
                    NodeAddr {
                        addr: advertise.clone(),
                    },
                )]
                .into(),
            )
            .await?;
        println!("replica member {} bootstrapped a new ring", args.id);
    } else {
        join(&args, &transport, &advertise).await?;
        println!("replica member {} joined as a voter", args.id);
    }
    server.await.context("server task")??;
    if let Err(e) = replica.shutdown().await {
        tracing::warn!(error = %e, "replica: shutdown");
    }
    Ok(())
}

/// Asks the contacts in turn to add this member until one succeeds or `--join-timeout` ends.
async fn join(
    args: &ReplicaArgs,
    transport: &HttpTransport,
    advertise: &str,
) -> anyhow::Result<()> {
    let request = JoinRequest {
        id: args.id,
        addr: advertise.to_owned(),
    };
    for (id, url) in &args.join {
        transport.set_addr(*id, url);
    }
    let deadline = tokio::time::Instant::now() + args.join_timeout;
    let mut last = String::from("no contact answered");
    while tokio::time::Instant::now() < deadline {
        for (id, _) in &args.join {
            match transport
                .call::<_, Outcome<()>>(*id, crate::replica::Call::Join, &request)
                .await
            {
                Ok(Outcome::Ok(())) => return Ok(()),
                Ok(Outcome::Err(f @ CallFailure::BadRequest { .. })) => {
                    bail!("join refused: {f:?}")
                }
                Ok(Outcome::Err(f)) => last = format!("member {id}: {f:?}"),
                Err(e) => last = e.to_string(),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("could not join within {:?}: {last}", args.join_timeout)
}
