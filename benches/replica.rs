//! The replicated log's figures (issue 16), side by side for 1 and 3 members: acknowledged
//! publishes per second and publish-to-ack latency (p50/p99) for 1 and 100 publishers; the
//! time from a leader's kill -9 to the next acknowledged publish; how long a new member with
//! `--history-mb` of history takes to join (learner, catch up, voter).
//!
//! ```text
//! cargo bench --bench replica -- [--seconds 5] [--history-mb 100]
//! ```
//!
//! Members are `ouroboros replica` processes on loopback (the binary built with this bench),
//! every publish an authenticated HTTP call to the leader, as a node would make it.

#[path = "../tests/support/replica.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ouroboros::replica::{Call, HttpTransport, NodeId, Outcome, PublishRequest};
use support::{Logs, Member, book_of, join_new, operator, status_of};

/// A ring of `n` members; returns them, leader first.
async fn ring(n: usize, logs: &Logs, next_id: &mut NodeId) -> Vec<Member> {
    let mut first = Member::start(*next_id, &[], logs.path()).await;
    *next_id += 1;
    first
        .wait_line("bootstrapped", Duration::from_secs(30))
        .await;
    let mut members = vec![first];
    while members.len() < n {
        let book = Arc::new(std::sync::Mutex::new(book_of(&members)));
        members.push(join_new(*next_id, &book, logs.path()).await);
        *next_id += 1;
    }
    members
}

/// The index of the leader among `members`.
async fn leader(op: &HttpTransport, members: &[Member]) -> usize {
    for _ in 0..200 {
        for (i, m) in members.iter().enumerate() {
            if status_of(op, m).await.is_some_and(|s| s.role == "leader") {
                return i;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no leader");
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// `publishers` clients publishing back to back to `leader` for `seconds`: (acks/s, p50, p99).
async fn load(
    leader: &Member,
    publishers: usize,
    seconds: u64,
    body_bytes: usize,
) -> (f64, Duration, Duration) {
    let end = Instant::now() + Duration::from_secs(seconds);
    let body = serde_json::Value::String("x".repeat(body_bytes));
    let tasks: Vec<_> = (0..publishers)
        .map(|p| {
            let (id, url) = (leader.id, leader.url.clone());
            let body = body.clone();
            tokio::spawn(async move {
                let op = operator();
                op.set_addr(id, &url);
                let mut lat = Vec::new();
                let mut k = 0u64;
                while Instant::now() < end {
                    let req = PublishRequest {
                        room: format!("room-{}", p % 10),
                        from: format!("p{p}"),
                        id: format!("{k}"),
                        body: body.clone(),
                    };
                    let t = Instant::now();
                    if let Ok(Outcome::Ok(_)) =
                        op.call::<_, Outcome<u64>>(id, Call::Publish, &req).await
                    {
                        lat.push(t.elapsed());
                    }
                    k += 1;
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    (
        all.len() as f64 / seconds as f64,
        percentile(&all, 0.5),
        percentile(&all, 0.99),
    )
}

/// kill -9 the leader while one client publishes to whichever member answers; the time from
/// the kill to the next acknowledged publish.
async fn failover(members: &mut Vec<Member>) -> Duration {
    let op = operator();
    let l = leader(&op, members).await;
    let dead = members.remove(l);
    let others = book_of(members);
    for (id, url) in &others {
        op.set_addr(*id, url);
    }
    let killed = Instant::now();
    dead.kill9().await;
    let mut k = 0u64;
    loop {
        for (id, _) in &others {
            let req = PublishRequest {
                room: "failover".into(),
                from: "f".into(),
                id: format!("{k}"),
                body: serde_json::json!(k),
            };
            k += 1;
            if let Ok(Outcome::Ok(_)) = op.call::<_, Outcome<u64>>(*id, Call::Publish, &req).await {
                return killed.elapsed();
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "no leader after 60 s"
        );
    }
}

#[tokio::main]
async fn main() {
    ouroboros::install_crypto_provider();
    let mut seconds = 5u64;
    let mut history_mb = 100usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seconds" => seconds = args.next().and_then(|v| v.parse().ok()).unwrap_or(5),
            "--history-mb" => history_mb = args.next().and_then(|v| v.parse().ok()).unwrap_or(100),
            "--bench" => {}
            other => eprintln!("ignored argument {other}"),
        }
    }
    let logs = Logs::new();
    let op = operator();
    let mut next_id = 1;
    println!("| members | publishers | acks/s | p50 | p99 |");
    println!("|---|---|---|---|---|");
    for n in [1usize, 3] {
        let members = ring(n, &logs, &mut next_id).await;
        let l = leader(&op, &members).await;
        for publishers in [1usize, 100] {
            let (rate, p50, p99) = load(&members[l], publishers, seconds, 100).await;
            println!(
                "| {n} | {publishers} | {rate:.0} | {:.2} ms | {:.2} ms |",
                p50.as_secs_f64() * 1e3,
                p99.as_secs_f64() * 1e3
            );
        }
        for m in members {
            m.stop().await;
        }
    }

    let mut members = ring(3, &logs, &mut next_id).await;
    let mut times = Vec::new();
    for _ in 0..5 {
        times.push(failover(&mut members).await);
        let book = Arc::new(std::sync::Mutex::new(book_of(&members)));
        members.push(join_new(next_id, &book, logs.path()).await);
        next_id += 1;
        let l = leader(&op, &members).await;
        let dead: Vec<NodeId> = status_of(&op, &members[l])
            .await
            .map(|s| {
                s.voters
                    .iter()
                    .map(|v| v.0)
                    .filter(|id| !members.iter().any(|m| m.id == *id))
                    .collect()
            })
            .unwrap_or_default();
        for id in dead {
            op.set_addr(members[l].id, &members[l].url);
            let _ = op
                .call::<_, Outcome<()>>(
                    members[l].id,
                    Call::Remove,
                    &ouroboros::replica::RemoveRequest { id },
                )
                .await;
        }
    }
    times.sort();
    println!(
        "\nleader kill -9 → next acknowledged publish (3 members, 5 kills): min {:.0} ms, median {:.0} ms, max {:.0} ms",
        times[0].as_secs_f64() * 1e3,
        times[times.len() / 2].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3
    );

    // History for a new member to catch up with: 64 KiB bodies.
    let l = leader(&op, &members).await;
    let per = 64 * 1024;
    let count = history_mb * 1024 * 1024 / per;
    let t = Instant::now();
    let leader_m = &members[l];
    let filled = {
        let chunks: Vec<_> = (0..8)
            .map(|w| {
                let (id, url) = (leader_m.id, leader_m.url.clone());
                tokio::spawn(async move {
                    let op = operator();
                    op.set_addr(id, &url);
                    let body = serde_json::Value::String("h".repeat(per - 64));
                    let mut stored = 0usize;
                    for k in (w..count).step_by(8) {
                        let req = PublishRequest {
                            room: "history".into(),
                            from: "h".into(),
                            id: format!("{k}"),
                            body: body.clone(),
                        };
                        for _ in 0..20 {
                            match op.call::<_, Outcome<u64>>(id, Call::Publish, &req).await {
                                Ok(Outcome::Ok(_)) => {
                                    stored += 1;
                                    break;
                                }
                                other => eprintln!("history publish {k}: {other:?}"),
                            }
                        }
                    }
                    stored
                })
            })
            .collect();
        let mut stored = 0;
        for c in chunks {
            stored += c.await.unwrap();
        }
        assert_eq!(stored, count, "not every history message was acknowledged");
        t.elapsed()
    };
    // Past `snapshot_every` (10 000 entries) the leader has built a snapshot and purged the
    // log below it (keeping 1 000 entries): the new member gets the snapshot, then the log.
    let book = Arc::new(std::sync::Mutex::new(book_of(&members)));
    let t = Instant::now();
    let joined = join_new(next_id, &book, logs.path()).await;
    let join = t.elapsed();
    let mib = |b: Option<u64>| {
        b.map_or_else(
            || "?".to_owned(),
            |b| format!("{:.0} MiB", b as f64 / (1 << 20) as f64),
        )
    };
    println!(
        "new member with {history_mb} MB of history ({count} × 64 KiB): joined as a voter in {:.2} s (filling the history took {:.1} s); peak RSS: new member {}, {}",
        join.as_secs_f64(),
        filled.as_secs_f64(),
        mib(joined.peak_rss()),
        members
            .iter()
            .enumerate()
            .map(|(i, m)| format!(
                "member {}{} {}",
                m.id,
                if i == l { " (leader)" } else { "" },
                mib(m.peak_rss())
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    joined.stop().await;
    for m in members {
        m.stop().await;
    }
}
