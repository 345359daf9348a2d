//! The replicated log across real processes (issue 16): `ouroboros replica` members on
//! loopback, talking HTTP with the ring's secret, killed with SIGKILL, stopped with SIGSTOP,
//! replaced through membership changes, while clients publish without pause. What is checked
//! is the promise of `protocol/replication.md`: every acknowledged message is in every
//! surviving member's log exactly once, at the `seq` it was acknowledged with, and the members
//! agree on every `seq`.

#[path = "support/replica.rs"]
mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libc::{SIGCONT, SIGSTOP};
use ouroboros::replica::{
    Call, HistoryRequest, HttpTransport, Message, NodeId, Outcome, PublishRequest, RemoveRequest,
    Status,
};
use rand::Rng;
use support::{
    Book, Logs, Member, book_of, join_new, operator, operator_with_timeout, status_of, until_ok,
};
use tokio::time::{Instant, timeout};
const ROOMS: [&str; 2] = ["lobby", "ops"];

/// What the publishers got acknowledged: (room, from, id) → seq.
type Acks = Arc<Mutex<HashMap<(String, String, String), u64>>>;

/// A publisher: publishes `p{n}-{k}` without pause to a random live member, retrying a
/// message (same id) until it is acknowledged; stops when `stop` is set. A message that no
/// member acknowledges within 60 s fails the test.
async fn publisher(n: usize, book: Book, acks: Acks, stop: Arc<AtomicBool>) -> usize {
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
        k += 1;
    }
    k
}

/// Waits until every member has applied everything its leader has, then returns each
/// member's history of every room, and checks they are the same.
async fn settled_histories(
    op: &HttpTransport,
    members: &[Member],
) -> BTreeMap<String, Vec<Message>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut statuses = Vec::new();
        for m in members {
            statuses.push(status_of(op, m).await);
        }
        let all: Option<Vec<Status>> = statuses.into_iter().collect();
        if let Some(all) = all {
            let leader = all.iter().find(|s| s.role == "leader");
            if let Some(l) = leader
                && all
                    .iter()
                    .all(|s| s.applied == l.last_log && s.leader == Some(l.id))
            {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "members did not settle within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut first: Option<BTreeMap<String, Vec<Message>>> = None;
    for m in members {
        op.set_addr(m.id, &m.url);
        let mut rooms = BTreeMap::new();
        for room in ROOMS {
            let req = HistoryRequest { room: room.into() };
            let Outcome::Ok(h) = op
                .call::<_, Outcome<Vec<Message>>>(m.id, Call::History, &req)
                .await
                .unwrap()
            else {
                panic!("history refused by member {}", m.id);
            };
            rooms.insert(room.to_owned(), h);
        }
        match &first {
            None => first = Some(rooms),
            Some(f) => assert!(
                *f == rooms,
                "member {} holds another history than member {}",
                m.id,
                members[0].id
            ),
        }
    }
    first.unwrap()
}

/// Every room numbered 1, 2, 3, … with no `(from, id)` twice, and every acknowledged message
/// in it exactly once at its acknowledged seq. Returns (acknowledged, stored).
fn audit(history: &BTreeMap<String, Vec<Message>>, acks: &Acks) -> (usize, usize) {
    let mut at: HashMap<(String, String, String), u64> = HashMap::new();
    let mut stored = 0;
    for (room, messages) in history {
        for (i, m) in messages.iter().enumerate() {
            assert_eq!(m.seq, i as u64 + 1, "room {room}: seqs are not dense");
            let key = (room.clone(), m.from.clone(), m.id.clone());
            assert!(
                at.insert(key, m.seq).is_none(),
                "room {room}: {} stored twice",
                m.id
            );
            stored += 1;
        }
    }
    let acks = acks.lock().unwrap();
    for (key, seq) in acks.iter() {
        assert_eq!(
            at.get(key),
            Some(seq),
            "acknowledged {key:?} at seq {seq} is not there in the surviving members' log"
        );
    }
    (acks.len(), stored)
}

/// Three members, four publishers without pause; 20 times a random member (leader or
/// follower) is killed with SIGKILL and replaced (a new member joins, the dead one is
/// removed), and every third round the oldest member is also rotated out gracefully.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_messages_survive_twenty_kill_9s_with_rotations() {
    let logs = Logs::new();
    let op = operator();
    let mut members = vec![Member::start(1, &[], logs.path()).await];
    members[0]
        .wait_line("bootstrapped", Duration::from_secs(30))
        .await;
    let book: Book = Arc::new(Mutex::new(book_of(&members)));
    let mut next_id = 2;
    while members.len() < 3 {
        members.push(join_new(next_id, &book, logs.path()).await);
        next_id += 1;
        *book.lock().unwrap() = book_of(&members);
    }

    let acks: Acks = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let publishers: Vec<_> = (0..4)
        .map(|n| tokio::spawn(publisher(n, book.clone(), acks.clone(), stop.clone())))
        .collect();

    let mut kills = 0;
    let mut killed_leaders = 0;
    let mut rotations = 0;
    for round in 0..20 {
        // Let some messages through between faults.
        let before = acks.lock().unwrap().len();
        let wait_until = Instant::now() + Duration::from_secs(10);
        while acks.lock().unwrap().len() < before + 20 {
            assert!(
                Instant::now() < wait_until,
                "no progress before round {round}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let victim = rand::rng().random_range(0..members.len());
        let was_leader = status_of(&op, &members[victim])
            .await
            .is_some_and(|s| s.role == "leader");
        let dead = members.remove(victim);
        let dead_id = dead.id;
        *book.lock().unwrap() = book_of(&members);
        dead.kill9().await;
        kills += 1;
        killed_leaders += usize::from(was_leader);
        // The replacement joins; then the dead member is removed.
        let new = join_new(next_id, &book, logs.path()).await;
        next_id += 1;
        members.push(new);
        *book.lock().unwrap() = book_of(&members);
        until_ok::<_, ()>(&op, &book, Call::Remove, &RemoveRequest { id: dead_id }).await;

        if round % 3 == 2 {
            // A planned rotation: a successor joins, the oldest member leaves (stepping aside
            // first when it leads), then stops.
            let new = join_new(next_id, &book, logs.path()).await;
            next_id += 1;
            members.push(new);
            *book.lock().unwrap() = book_of(&members);
            let oldest = members.remove(0);
            *book.lock().unwrap() = book_of(&members);
            until_ok::<_, ()>(&op, &book, Call::Remove, &RemoveRequest { id: oldest.id }).await;
            oldest.stop().await;
            rotations += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut published = 0;
    for p in publishers {
        published += p.await.unwrap();
    }
    let history = settled_histories(&op, &members).await;
    let (acked, stored) = audit(&history, &acks);
    eprintln!(
        "replica soak: {kills} kill -9 ({killed_leaders} of a leader), {rotations} rotations, \
         {published} published, {acked} acknowledged, {stored} stored, 0 lost"
    );
    assert_eq!(kills, 20);
    assert!(acked > 200, "too few messages went through: {acked}");
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
    let mut members = vec![Member::start(1, &[], logs.path()).await];
    members[0]
        .wait_line("bootstrapped", Duration::from_secs(30))
        .await;
    let book: Book = Arc::new(Mutex::new(book_of(&members)));
    for id in 2..=3 {
        members.push(join_new(id, &book, logs.path()).await);
        *book.lock().unwrap() = book_of(&members);
    }
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
    let history = settled_histories(&op, &members).await;
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
