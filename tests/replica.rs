//! The replicated log across real processes (issue 16): `ouroboros replica` members on
//! loopback, talking HTTP with the ring's secret, killed with SIGKILL, stopped with SIGSTOP,
//! replaced through membership changes, while clients publish without pause. What is checked
//! is the promise of `protocol/replication.md`: every acknowledged message is in every
//! surviving member's log exactly once, at the `seq` it was acknowledged with, and the members
//! agree on every `seq`.

#[path = "support/replica.rs"]
mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libc::{SIGCONT, SIGSTOP};
use ouroboros::replica::{
    Call, HistoryRequest, Message, NodeId, Outcome, PublishRequest, RemoveRequest,
};
use rand::Rng;
use support::{
    Acks, Book, Kind, Logs, Member, audit, await_progress, book_of, join_new, kill_and_replace,
    operator, operator_with_timeout, settled_histories, status_of, until_ok,
};
use tokio::sync::watch;
use tokio::time::{Instant, timeout};
const ROOMS: [&str; 2] = ["lobby", "ops"];

/// A publisher: publishes `p{n}-{k}` without pause to a random live member, retrying a
/// message (same id) until it is acknowledged; stops when `stop` is set. A message that no
/// member acknowledges within 60 s fails the test.
async fn publisher(
    n: usize,
    book: Book,
    acks: Acks,
    progress: Arc<watch::Sender<usize>>,
    stop: Arc<AtomicBool>,
) -> usize {
    let op = operator();
    let from = format!("p{n}");
    let mut k = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let room = ROOMS[k % ROOMS.len()].to_owned();
        let req = PublishRequest {
            room: room.clone(),
            from: from.clone(),
            id: format!("{from}-{k}"),
            body: serde_json::json!({ "n": n, "k": k }),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let seq = loop {
            assert!(
                Instant::now() < deadline,
                "{} was not acknowledged within 60 s",
                req.id
            );
            let (id, url) = {
                let b = book.lock().unwrap();
                b[rand::rng().random_range(0..b.len())].clone()
            };
            op.set_addr(id, &url);
            match op.call::<_, Outcome<u64>>(id, Call::Publish, &req).await {
                Ok(Outcome::Ok(seq)) => break seq,
                Ok(Outcome::Err(f)) => assert!(f.is_retryable(), "{} refused: {f:?}", req.id),
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        acks.lock()
            .unwrap()
            .insert((room, from.clone(), req.id), seq);
        progress.send_modify(|n| *n += 1);
        k += 1;
    }
    k
}

/// Members 1 (bootstrapped), 2 and 3 (joined as voters), and the book of their addresses.
async fn three_members(logs: &Logs) -> (Vec<Member>, Book) {
    let mut members = vec![Member::start(1, &[], logs.path()).await];
    members[0]
        .wait_line("bootstrapped", Duration::from_secs(30))
        .await;
    let book: Book = Arc::new(Mutex::new(book_of(&members)));
    for id in 2..=3 {
        members.push(join_new(id, &book, logs.path()).await);
        *book.lock().unwrap() = book_of(&members);
    }
    (members, book)
}

/// What a churn run did.
struct Churn {
    kills: usize,
    killed_leaders: usize,
    rotations: usize,
    published: usize,
    acked: usize,
    stored: usize,
}

/// Three members, four publishers without pause, `rounds` rounds; in each, when `kill`, a
/// random member (leader or follower) is killed with SIGKILL and replaced (a new member joins,
/// the dead one is removed), and every `rotate_every`-th round the oldest member is rotated out
/// gracefully (a successor joins, the oldest is removed, stepping aside first when it leads,
/// then stops). Ends with the audit of every member's log against every acknowledgement.
async fn churn(rounds: usize, kill: bool, rotate_every: usize) -> Churn {
    let logs = Logs::new();
    let op = operator();
    let (mut members, book) = three_members(&logs).await;
    let mut next_id = 4;

    let acks: Acks = Arc::default();
    let (progress, mut acked_so_far) = watch::channel(0usize);
    let progress = Arc::new(progress);
    let stop = Arc::new(AtomicBool::new(false));
    let publishers: Vec<_> = (0..4)
        .map(|n| {
            let (book, acks, stop, progress) =
                (book.clone(), acks.clone(), stop.clone(), progress.clone());
            tokio::spawn(publisher(n, book, acks, progress, stop))
        })
        .collect();

    let mut c = Churn {
        kills: 0,
        killed_leaders: 0,
        rotations: 0,
        published: 0,
        acked: 0,
        stored: 0,
    };
    for round in 0..rounds {
        // Let some messages through between faults.
        await_progress(&mut acked_so_far, 20, Duration::from_secs(30), round).await;
        if kill {
            // The replacement joins; then the dead member is removed.
            let led = kill_and_replace(
                Kind::Replica,
                &mut members,
                &book,
                &op,
                next_id,
                logs.path(),
            )
            .await;
            next_id += 1;
            c.kills += 1;
            c.killed_leaders += usize::from(led);
        }
        if round % rotate_every == rotate_every - 1 {
            let new = join_new(next_id, &book, logs.path()).await;
            next_id += 1;
            members.push(new);
            *book.lock().unwrap() = book_of(&members);
            let oldest = members.remove(0);
            *book.lock().unwrap() = book_of(&members);
            until_ok::<_, ()>(&op, &book, Call::Remove, &RemoveRequest { id: oldest.id }).await;
            oldest.stop().await;
            c.rotations += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for p in publishers {
        c.published += p.await.unwrap();
    }
    let history = settled_histories(&op, &members, &ROOMS).await;
    (c.acked, c.stored) = audit(&history, &acks);
    // A client resuming after a failover asks for what follows the last seq it saw.
    let lobby = &history["lobby"];
    let since = lobby.len() / 2;
    let resumed: Vec<Message> = until_ok(
        &op,
        &book,
        Call::History,
        &HistoryRequest {
            room: "lobby".into(),
            since: since as u64,
            limit: Some(50),
        },
    )
    .await;
    assert_eq!(resumed, lobby[since..(since + 50).min(lobby.len())]);
    eprintln!(
        "replica churn: {} kill -9 ({} of a leader), {} rotations, {} published, {} acknowledged, \
         {} stored, 0 lost",
        c.kills, c.killed_leaders, c.rotations, c.published, c.acked, c.stored
    );
    for m in members {
        m.stop().await;
    }
    c
}

/// 20 kill -9s of a random member (leader or follower), each replaced, with a planned rotation
/// every third round, under four publishers: nothing acknowledged is lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_messages_survive_twenty_kill_9s_with_rotations() {
    let c = churn(20, true, 3).await;
    assert_eq!((c.kills, c.rotations), (20, 6));
    assert!(c.acked > 200, "too few messages went through: {}", c.acked);
}

/// A three-member ring rotates 30 times (each time a successor joins and the oldest member
/// leaves, stepping aside when it leads) under four publishers: 0 acknowledged messages lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_three_member_ring_rotates_thirty_times_without_losing_an_acknowledged_message() {
    let c = churn(30, false, 1).await;
    assert_eq!(c.rotations, 30);
    assert!(c.acked > 300, "too few messages went through: {}", c.acked);
}

/// A leader stopped with SIGSTOP (it neither sends nor answers, as if cut off) is replaced by
/// an election among the other two; a publish sent to the stopped leader waits in its socket.
/// When it resumes, it learns the newer term and acknowledges nothing the majority did not
/// commit: the publish it held is either refused or committed through the new leader, at one
/// seq every member agrees on; and it catches up with what was published meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_cut_off_and_resumed_acknowledges_nothing_the_majority_did_not_commit() {
    let logs = Logs::new();
    let op = operator();
    let (members, book) = three_members(&logs).await;
    let acks: Acks = Arc::default();
    let publish = |i: usize| PublishRequest {
        room: "lobby".into(),
        from: "op".into(),
        id: format!("m-{i}"),
        body: serde_json::json!(i),
    };
    for i in 0..10 {
        let seq: u64 = until_ok(&op, &book, Call::Publish, &publish(i)).await;
        acks.lock()
            .unwrap()
            .insert(("lobby".into(), "op".into(), format!("m-{i}")), seq);
    }
    let leader_id = status_of(&op, &members[0]).await.unwrap().leader.unwrap();
    let leader = members.iter().position(|m| m.id == leader_id).unwrap();
    members[leader].signal(SIGSTOP);
    let others: Vec<(NodeId, String)> = members
        .iter()
        .filter(|m| m.id != leader_id)
        .map(|m| (m.id, m.url.clone()))
        .collect();
    let majority: Book = Arc::new(Mutex::new(others));
    // A publish straight to the stopped leader: it waits in its socket.
    let held = {
        let op = operator_with_timeout(Duration::from_secs(60));
        op.set_addr(leader_id, &members[leader].url);
        let req = publish(100);
        tokio::spawn(async move {
            op.call::<_, Outcome<u64>>(leader_id, Call::Publish, &req)
                .await
        })
    };
    // The other two elect a leader and go on.
    for i in 10..30 {
        let seq: u64 = until_ok(&op, &majority, Call::Publish, &publish(i)).await;
        acks.lock()
            .unwrap()
            .insert(("lobby".into(), "op".into(), format!("m-{i}")), seq);
    }
    members[leader].signal(SIGCONT);
    let held = timeout(Duration::from_secs(30), held)
        .await
        .expect("the held publish gets an answer once the member resumes")
        .unwrap();
    let history = settled_histories(&op, &members, &ROOMS).await;
    let held_stored = history["lobby"].iter().find(|m| m.id == "m-100");
    match held {
        Ok(Outcome::Ok(seq)) => assert_eq!(
            held_stored.map(|m| m.seq),
            Some(seq),
            "the resumed leader acknowledged m-100 at {seq}, which the majority does not hold"
        ),
        other => eprintln!("held publish: {other:?} (stored: {held_stored:?})"),
    }
    let (acked, stored) = audit(&history, &acks);
    assert!(acked >= 30 && stored >= 30);
    for m in members {
        m.stop().await;
    }
}

/// Set in the copy of this test binary that runs inside a fresh network namespace.
/// A real network partition: the three members run in a network namespace this test creates
/// (`unshare -n`, as root; removed with the process), each on its own loopback address, and an
/// nftables rule in that namespace drops every packet between the leader's address and the
/// others'. The cut-off leader keeps running and keeps taking publishes from a client that
/// still reaches it: it must acknowledge none of them, while the other two elect a leader and
/// acknowledge. Once the rule is gone the old leader catches up, and none of the publishes it
/// took while cut off is in anyone's log.
#[test]
fn a_leader_cut_off_by_the_network_acknowledges_nothing_and_catches_up_when_healed() {
    support::in_own_network_namespace(
        "a_leader_cut_off_by_the_network_acknowledges_nothing_and_catches_up_when_healed",
        partition_inside_namespace,
    );
}

async fn partition_inside_namespace() {
    let logs = Logs::new();
    let op = operator();
    let ips = ["127.0.0.11", "127.0.0.12", "127.0.0.13"];
    let mut members = vec![Member::start_at(ips[0], 1, &[], logs.path()).await];
    members[0]
        .wait_line("bootstrapped", Duration::from_secs(30))
        .await;
    let book: Book = Arc::new(Mutex::new(book_of(&members)));
    for (i, ip) in ips.iter().enumerate().skip(1) {
        let contacts = book.lock().unwrap().clone();
        let mut m = Member::start_at(ip, i as NodeId + 1, &contacts, logs.path()).await;
        m.wait_line("joined as a voter", Duration::from_secs(90))
            .await;
        members.push(m);
        *book.lock().unwrap() = book_of(&members);
    }
    let acks: Acks = Arc::default();
    let publish = |id: String| PublishRequest {
        room: "lobby".into(),
        from: "op".into(),
        id,
        body: serde_json::json!("x"),
    };
    let ack = |id: String, seq: u64| {
        acks.lock()
            .unwrap()
            .insert(("lobby".into(), "op".into(), id), seq);
    };
    for i in 0..10 {
        let id = format!("before-{i}");
        ack(
            id.clone(),
            until_ok(&op, &book, Call::Publish, &publish(id)).await,
        );
    }
    let leader_id = status_of(&op, &members[0]).await.unwrap().leader.unwrap();
    let leader = members.iter().position(|m| m.id == leader_id).unwrap();
    let cut = ips[leader];
    let rest: Vec<&str> = ips.iter().copied().filter(|ip| *ip != cut).collect();
    support::cut_off(cut, &rest);
    // The client still reaches the cut-off leader (it calls from 127.0.0.1): nothing it
    // publishes there may be acknowledged.
    op.set_addr(leader_id, &members[leader].url);
    for i in 0..3 {
        let answer = op
            .call::<_, Outcome<u64>>(leader_id, Call::Publish, &publish(format!("minority-{i}")))
            .await;
        assert!(
            !matches!(answer, Ok(Outcome::Ok(_))),
            "the cut-off leader acknowledged minority-{i}: {answer:?}"
        );
    }
    // The other two go on.
    let majority: Book = Arc::new(Mutex::new(
        members
            .iter()
            .filter(|m| m.id != leader_id)
            .map(|m| (m.id, m.url.clone()))
            .collect(),
    ));
    for i in 0..20 {
        let id = format!("during-{i}");
        ack(
            id.clone(),
            until_ok(&op, &majority, Call::Publish, &publish(id)).await,
        );
    }
    support::heal();
    let history = settled_histories(&op, &members, &ROOMS).await;
    let minority: Vec<_> = history["lobby"]
        .iter()
        .filter(|m| m.id.starts_with("minority-"))
        .collect();
    assert!(
        minority.is_empty(),
        "publishes taken while cut off reached the log: {minority:?}"
    );
    let (acked, stored) = audit(&history, &acks);
    assert_eq!((acked, stored), (30, 30));
    eprintln!("partition: 3 publishes refused by the cut-off leader, 30 acknowledged, healed");
    for m in members {
        m.stop().await;
    }
}

/// A flood of badly signed calls from one address (127.0.0.2) to every member: each member
/// answers it `429` after `REFUSAL_BURST` refusals, while the ring (members on 127.0.0.1)
/// keeps replicating and acknowledging publishes, and an operator on 127.0.0.1 is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_refused_calls_gets_429_while_the_members_keep_replicating() {
    let logs = Logs::new();
    let op = operator();
    let (members, book) = three_members(&logs).await;
    let flooder = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // One flooder per member: bad MACs on `append`, the members' own call.
    let floods: Vec<_> = members
        .iter()
        .map(|m| {
            let (client, id, url, stop) = (flooder.clone(), m.id, m.url.clone(), stop.clone());
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let r = client
                        .post(format!("{url}/replica/v1/append"))
                        .header("x-replica-from", "99")
                        .header("x-replica-to", id.to_string())
                        .header(
                            "x-replica-ts",
                            ouroboros::replica::system_now_ms().to_string(),
                        )
                        .header("x-replica-mac", "AAAA")
                        .body(vec![b'x'; 64 << 10])
                        .send()
                        .await
                        .expect("the member answers the flood");
                    statuses.push(r.status().as_u16());
                }
                statuses
            })
        })
        .collect();
    // Publishes through the ring go on: the leader's appends to the followers are served.
    let publish = |i: usize| PublishRequest {
        room: "lobby".into(),
        from: "op".into(),
        id: format!("m-{i}"),
        body: serde_json::json!(i),
    };
    let t = Instant::now();
    let mut seqs = Vec::new();
    for i in 0..200 {
        seqs.push(until_ok::<_, u64>(&op, &book, Call::Publish, &publish(i)).await);
    }
    let during = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    assert_eq!(seqs, (1..=200).collect::<Vec<u64>>());
    let burst = ouroboros::replica::REFUSAL_BURST as usize;
    for f in floods {
        let statuses = f.await.unwrap();
        assert!(
            statuses.len() > burst,
            "the flood went on: {} calls",
            statuses.len()
        );
        // Refused (401) during the burst, then 429 (with an odd 401 as a refusal is earned back).
        let first_429 = statuses.iter().position(|s| *s == 429);
        assert!(
            first_429.is_some_and(|i| i <= burst),
            "429 after at most {burst} refusals: {:?}",
            &statuses[..statuses.len().min(40)]
        );
        assert!(statuses.iter().all(|s| *s == 401 || *s == 429));
        let limited = statuses.iter().filter(|s| **s == 429).count();
        assert!(
            limited * 10 >= statuses.len() * 9,
            "mostly 429: {limited} of {}",
            statuses.len()
        );
    }
    // Every member holds the 200 messages: replication was never limited.
    let histories = settled_histories(&op, &members, &["lobby"]).await;
    assert_eq!(histories["lobby"].len(), 200);
    eprintln!("200 publishes acknowledged during the flood in {during:?}");
    for m in members {
        m.stop().await;
    }
}
