//! [`Launcher`]: starts a successor. [`LocalLauncher`] and [`NoLauncher`].

use crate::discovery::SignalingEndpoint;
use crate::handoff::{SECRET_ENV, Secret};
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

/// What a successor needs to find and take over from its predecessor. Public by design: a
/// launcher may put it into workflow inputs. Never holds secrets.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SuccessorRequest {
    /// The successor's generation (predecessor + 1).
    pub generation: u64,
    /// The predecessor's PeerJS peer id.
    pub predecessor_peer_id: String,
    /// The predecessor's signaling endpoints.
    pub predecessor_endpoints: Vec<SignalingEndpoint>,
    /// Launch attempt (from 1), for logs and idempotency keys.
    pub attempt: u32,
    /// A member of a replicated ring (`--replicas N`) to start instead: it joins the ring
    /// through its live members and takes over from no one (the generation and predecessor
    /// fields are then informational only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub member: Option<MemberLaunch>,
}

/// A new member of a replicated ring (`protocol/replication.md`, "Rotation"). Public like the
/// rest of a [`SuccessorRequest`]: ids and URLs, never a secret.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MemberLaunch {
    /// The new member's id, never used before in this ring.
    pub id: u64,
    /// Live members to join through: `(id, base URL)`, tried in turn.
    pub join: Vec<(u64, String)>,
    /// One of the ring's founding members (ids `2..=N`, started by the first node), which
    /// live staggered first lifetimes; on one machine each gets its own data dir
    /// (`<data-dir>/member-<id>`). A successor reuses its predecessor's data dir.
    pub founding: bool,
}

impl MemberLaunch {
    /// `--replica-join`'s value: `ID=URL,ID=URL`.
    pub fn join_arg(&self) -> String {
        self.join
            .iter()
            .map(|(id, url)| format!("{id}={url}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl SuccessorRequest {
    /// The endpoints as the JSON string passed in `--predecessor-endpoints` (and workflow
    /// inputs).
    pub fn endpoints_json(&self) -> String {
        serde_json::to_string(&self.predecessor_endpoints).expect("endpoints always serialize")
    }
}

/// Why a launch failed.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// Spawning a process or writing its log failed.
    #[error("launch I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A remote launcher (GitHub) failed; the message is safe to log.
    #[error("launcher: {0}")]
    Remote(String),
    /// This launcher does not launch.
    #[error("no launcher configured")]
    Disabled,
}

/// Starts a successor node. Called by the node when [`super::Lifecycle`] asks for it; a
/// successful return means the request was accepted, not that the successor runs yet (the
/// lifecycle waits for it to connect and relaunches otherwise).
#[async_trait::async_trait]
pub trait Launcher: Send + Sync {
    /// Starts the successor described by `request`.
    ///
    /// # Errors
    /// [`LaunchError`] if the request could not be made.
    async fn launch(&self, request: &SuccessorRequest) -> Result<(), LaunchError>;

    /// A short name for logs and `/status` (`local`, `github`, `none`).
    fn name(&self) -> &'static str;

    /// The ring is being stopped (Ctrl-C on the newest generation) before any launched
    /// successor took over: stop the successors still starting, so that none of them gives
    /// up on its predecessor, recovers and carries the ring on. Default: nothing (a remote
    /// launch cannot be recalled from here).
    async fn abandon(&self) {}
}

/// Launches nothing (`--launcher none`): `launch` fails with [`LaunchError::Disabled`].
#[derive(Debug, Default, Clone)]
pub struct NoLauncher;

#[async_trait::async_trait]
impl Launcher for NoLauncher {
    async fn launch(&self, _request: &SuccessorRequest) -> Result<(), LaunchError> {
        Err(LaunchError::Disabled)
    }
    fn name(&self) -> &'static str {
        "none"
    }
}

/// Flags of the current command line that a successor must not inherit: the successor gets
/// its own generation, predecessor, peer id and port.
const NOT_INHERITED: &[&str] = &[
    "--generation",
    "--predecessor-peer-id",
    "--predecessor-endpoints",
    "--peer-id",
    "--port",
];

/// Environment variables a successor must not inherit, for the same reason.
const ENV_NOT_INHERITED: &[&str] = &[
    "OUROBOROS_GENERATION",
    "OUROBOROS_PREDECESSOR_PEER_ID",
    "OUROBOROS_PREDECESSOR_ENDPOINTS",
    "OUROBOROS_PEER_ID",
    "OUROBOROS_PORT",
    "OUROBOROS_REPLICA_ID",
    "OUROBOROS_REPLICA_JOIN",
    "OUROBOROS_REPLICA_ADVERTISE",
];

/// Flags a new member of a replicated ring does not inherit: its own id, contacts and address
/// (its data dir too when it is a founding member).
const MEMBER_NOT_INHERITED: &[&str] = &["--replica-id", "--replica-join", "--replica-advertise"];

/// The successor's base command line, from this process's arguments (without the program
/// name): drops the flags in the not-inherited list (both `--flag value` and `--flag=value`)
/// and adds `--port 0` (the predecessor still holds its port).
pub fn successor_base_args(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut out = drop_flags(args, NOT_INHERITED);
    out.push("--port".into());
    out.push("0".into());
    out
}

/// `args` without the flags in `flags`, in both forms (`--flag value` and `--flag=value`).
pub fn drop_flags(args: impl IntoIterator<Item = OsString>, flags: &[&str]) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut skip_next = false;
    for a in args {
        if std::mem::take(&mut skip_next) {
            continue;
        }
        let s = a.to_string_lossy();
        if flags.contains(&s.as_ref()) {
            skip_next = true;
            continue;
        }
        if flags.iter().any(|f| s.starts_with(&format!("{f}="))) {
            continue;
        }
        out.push(a);
    }
    out
}

/// Launches `ouroboros node` on this machine as a detached child: its own process group
/// (so a Ctrl-C to the predecessor's terminal does not reach it and it outlives the
/// predecessor), stdin closed, stdout and stderr appended to
/// `<data-dir>/logs/node-gen<N>.log`. The generation and the predecessor go in argv; the
/// ring secret goes in `OUROBOROS_SECRET`, never argv.
#[derive(Debug)]
pub struct LocalLauncher {
    /// Program to run (normally `std::env::current_exe()`).
    exe: PathBuf,
    /// Arguments before the successor flags.
    base_args: Vec<OsString>,
    /// Where the logs go.
    data_dir: PathBuf,
    /// The ring secret handed down by environment.
    secret: Secret,
    /// Pids launched so far, newest last.
    launched: Mutex<Vec<u32>>,
    /// The children that may still run (reaped ones are dropped at the next launch).
    children: Mutex<Vec<tokio::process::Child>>,
    /// Test-only fault injection ([`super::Faults`], `OUROBOROS_FAULTS`).
    faults: super::Faults,
}

impl LocalLauncher {
    /// A launcher running `exe base_args... --generation N --predecessor-peer-id ID
    /// --predecessor-endpoints JSON`.
    pub fn new(
        exe: impl Into<PathBuf>,
        base_args: Vec<OsString>,
        data_dir: impl Into<PathBuf>,
        secret: Secret,
    ) -> Self {
        LocalLauncher {
            exe: exe.into(),
            base_args,
            data_dir: data_dir.into(),
            secret,
            launched: Mutex::new(Vec::new()),
            children: Mutex::new(Vec::new()),
            faults: super::Faults::from_env(),
        }
    }

    /// A launcher re-running this very command line (see [`successor_base_args`]).
    ///
    /// # Errors
    /// If the current executable cannot be found.
    pub fn from_current_process(
        data_dir: impl Into<PathBuf>,
        secret: Secret,
    ) -> std::io::Result<Self> {
        let exe = std::env::current_exe()?;
        let args = successor_base_args(std::env::args_os().skip(1));
        Ok(LocalLauncher::new(exe, args, data_dir, secret))
    }

    /// The full argument list for `request`.
    pub fn args_for(&self, request: &SuccessorRequest) -> Vec<OsString> {
        if let Some(m) = &request.member {
            let mut args = drop_flags(self.base_args.iter().cloned(), MEMBER_NOT_INHERITED);
            if m.founding {
                args = drop_flags(args, &["--data-dir"]);
                args.push("--data-dir".into());
                args.push(self.data_dir.join(format!("member-{}", m.id)).into());
            }
            args.extend(
                [
                    "--replica-id".into(),
                    m.id.to_string(),
                    "--replica-join".into(),
                    m.join_arg(),
                ]
                .map(OsString::from),
            );
            return args;
        }
        let mut args = self.base_args.clone();
        args.extend(
            [
                "--generation".into(),
                request.generation.to_string(),
                "--predecessor-peer-id".into(),
                request.predecessor_peer_id.clone(),
                "--predecessor-endpoints".into(),
                request.endpoints_json(),
            ]
            .map(OsString::from),
        );
        args
    }

    /// Log file of a generation's node.
    pub fn log_path(&self, generation: u64) -> PathBuf {
        self.data_dir
            .join("logs")
            .join(format!("node-gen{generation}.log"))
    }

    /// Log file of the node `request` starts: its generation's, or for a member of a
    /// replicated ring `member-<id>.log`.
    pub fn log_path_for(&self, request: &SuccessorRequest) -> PathBuf {
        match &request.member {
            Some(m) => self
                .data_dir
                .join("logs")
                .join(format!("member-{}.log", m.id)),
            None => self.log_path(request.generation),
        }
    }

    /// Pids of the children launched so far, newest last.
    pub fn launched_pids(&self) -> Vec<u32> {
        self.launched
            .lock()
            .expect("no panics while locked")
            .clone()
    }

    /// Starts the successor; `start_delay` (fault injection only, normally zero) makes it
    /// wait that long before it starts, like a queued run.
    fn spawn(&self, request: &SuccessorRequest, start_delay: Duration) -> std::io::Result<u32> {
        let log_path = self.log_path_for(request);
        std::fs::create_dir_all(log_path.parent().expect("log path has a parent"))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.args(self.args_for(request))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .env(SECRET_ENV, self.secret.to_env_value())
            .kill_on_drop(false)
            .process_group(0);
        for var in ENV_NOT_INHERITED {
            cmd.env_remove(var);
        }
        cmd.env_remove(super::faults::START_DELAY_ENV);
        if !start_delay.is_zero() {
            tracing::warn!(delay = ?start_delay, "fault injection: launch delayed");
            cmd.env(
                super::faults::START_DELAY_ENV,
                start_delay.as_millis().to_string(),
            );
        }
        let child = cmd.spawn()?;
        // The handle is kept (for `abandon`) until the child has exited; dropping it leaves
        // the child running.
        let pid = child.id().unwrap_or(0);
        tracing::info!(
            pid,
            generation = request.generation,
            member = request.member.as_ref().map(|m| m.id),
            attempt = request.attempt,
            log = %log_path.display(),
            exe = %OsStr::new(&self.exe).to_string_lossy(),
            "launched local successor"
        );
        self.launched
            .lock()
            .expect("no panics while locked")
            .push(pid);
        let mut children = self.children.lock().expect("no panics while locked");
        children.retain_mut(|c| matches!(c.try_wait(), Ok(None)));
        children.push(child);
        Ok(pid)
    }

    /// Kills (SIGKILL) every launched child that still runs; returns how many.
    fn kill_running(&self) -> usize {
        let mut children = self.children.lock().expect("no panics while locked");
        let mut killed = 0;
        for c in children.iter_mut() {
            if matches!(c.try_wait(), Ok(None)) && c.start_kill().is_ok() {
                tracing::info!(
                    pid = c.id(),
                    "stopped a local successor that had not taken over"
                );
                killed += 1;
            }
        }
        children.clear();
        killed
    }
}

/// Fault injection: `kill -9 pid` unless the discovery record at `record` already shows
/// `generation` (the successor may be serving: killing it would lose acknowledged messages).
fn kill_unless_published(pid: u32, generation: u64, record: &std::path::Path) {
    let published = std::fs::read(record)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["generation"].as_u64())
        .is_some_and(|g| g >= generation);
    if published {
        return;
    }
    tracing::warn!(
        pid,
        generation,
        "fault injection: kill -9 of a starting successor"
    );
    let _ = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status();
}

#[async_trait::async_trait]
impl Launcher for LocalLauncher {
    async fn launch(&self, request: &SuccessorRequest) -> Result<(), LaunchError> {
        let copies = if self.faults.duplicate() { 2 } else { 1 };
        for _ in 0..copies {
            let pid = self.spawn(request, self.faults.launch_delay())?;
            if let Some(after) = self.faults.kill_after() {
                let record = self.data_dir.join("ouroboros.json");
                let generation = request.generation;
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    kill_unless_published(pid, generation, &record);
                });
            }
        }
        Ok(())
    }
    fn name(&self) -> &'static str {
        "local"
    }
    async fn abandon(&self) {
        self.kill_running();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> SuccessorRequest {
        SuccessorRequest {
            generation: 4,
            predecessor_peer_id: "ouroboros-old".into(),
            predecessor_endpoints: vec![SignalingEndpoint {
                host: "127.0.0.1".into(),
                port: 9000,
                path: "/".into(),
                key: "peerjs".into(),
                secure: false,
                peer_id: None,
            }],
            attempt: 1,
            member: None,
        }
    }

    #[test]
    fn a_member_of_a_replicated_ring_joins_instead_of_taking_over() {
        let dir = std::path::Path::new("/data");
        let secret = Secret::new(b"0123456789abcdef-secret".to_vec()).unwrap();
        let base = successor_base_args(
            [
                "node",
                "--replicas",
                "3",
                "--replica-id=2",
                "--replica-join",
                "1=http://127.0.0.1:1",
                "--data-dir",
                "/data/member-2",
                "--lifetime",
                "20s",
            ]
            .map(OsString::from),
        );
        let l = LocalLauncher::new("/bin/ouroboros", base, dir, secret);
        let mut r = req();
        r.member = Some(MemberLaunch {
            id: 77,
            join: vec![(2, "http://127.0.0.1:2".into()), (3, "http://h:3".into())],
            founding: false,
        });
        let args: Vec<String> = l
            .args_for(&r)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "node",
                "--replicas",
                "3",
                "--data-dir",
                "/data/member-2",
                "--lifetime",
                "20s",
                "--port",
                "0",
                "--replica-id",
                "77",
                "--replica-join",
                "2=http://127.0.0.1:2,3=http://h:3"
            ]
        );
        assert_eq!(l.log_path_for(&r), dir.join("logs/member-77.log"));
        // A founding member gets a data dir of its own.
        r.member.as_mut().unwrap().founding = true;
        let args = l.args_for(&r);
        let at = args.iter().position(|a| a == "--data-dir").unwrap();
        assert_eq!(args[at + 1], OsString::from("/data/member-77"));
        assert_eq!(args.iter().filter(|a| *a == "--data-dir").count(), 1);
    }

    #[test]
    fn base_args_drop_per_node_flags() {
        let args: Vec<OsString> = [
            "node",
            "--lifetime",
            "20s",
            "--generation",
            "3",
            "--peer-id=x",
            "--port",
            "9000",
            "--launcher",
            "local",
            "--predecessor-peer-id",
            "p",
        ]
        .map(OsString::from)
        .into();
        let out = successor_base_args(args);
        assert_eq!(
            out,
            [
                "node",
                "--lifetime",
                "20s",
                "--launcher",
                "local",
                "--port",
                "0"
            ]
            .map(OsString::from)
        );
    }

    #[tokio::test]
    async fn local_launcher_detaches_and_passes_the_secret_by_env_only() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.txt");
        let secret = Secret::new(b"0123456789abcdef-secret".to_vec()).unwrap();
        // The "node": a shell printing its argv, its secret and its process group, then
        // waiting to be killed.
        let script = format!(
            "echo \"$@\" > {o}; echo \"secret=$OUROBOROS_SECRET\" >> {o}; \
             echo \"port=${{OUROBOROS_PORT:-unset}}\" >> {o}; \
             echo \"pgid=$(ps -o pgid= $$ | tr -d ' ') pid=$$\" >> {o}; echo done >> {o}; sleep 30",
            o = out.display()
        );
        let l = LocalLauncher::new(
            "/bin/sh",
            vec!["-c".into(), script.into(), "sh".into(), "node".into()],
            dir.path(),
            secret,
        );
        // SAFETY-free: setting env in a test process only affects children spawned after.
        assert!(std::env::var("OUROBOROS_PORT").is_err());
        l.launch(&req()).await.unwrap();
        let pid = l.launched_pids()[0];
        let text = loop {
            let t = std::fs::read_to_string(&out).unwrap_or_default();
            if t.contains("done") {
                break t;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("node --generation 4 --predecessor-peer-id ouroboros-old --predecessor-endpoints [{\"host\":\"127.0.0.1\""), "{}", lines[0]);
        assert!(!lines[0].contains("secret"), "secret leaked into argv");
        assert_eq!(lines[1], "secret=0123456789abcdef-secret");
        assert_eq!(
            lines[3],
            format!("pgid={pid} pid={pid}"),
            "own process group"
        );
        assert!(l.log_path(4).exists());
        // Clean up the child we started.
        let _ = std::process::Command::new("kill")
            .arg(pid.to_string())
            .status();
        let err = NoLauncher.launch(&req()).await.unwrap_err();
        assert!(matches!(err, LaunchError::Disabled));
    }

    #[tokio::test]
    async fn abandon_stops_the_successors_still_running() {
        let dir = tempfile::tempdir().unwrap();
        let secret = Secret::new(b"0123456789abcdef-secret".to_vec()).unwrap();
        let l = LocalLauncher::new(
            "/bin/sh",
            vec!["-c".into(), "sleep 30".into()],
            dir.path(),
            secret,
        );
        l.launch(&req()).await.unwrap();
        let pid = l.launched_pids()[0];
        let running = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                !s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
        };
        assert!(running());
        assert_eq!(l.kill_running(), 1);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while running() {
            assert!(
                std::time::Instant::now() < deadline,
                "successor {pid} still runs"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // Nothing left to stop.
        assert_eq!(l.kill_running(), 0);
        NoLauncher.abandon().await;
    }
}
