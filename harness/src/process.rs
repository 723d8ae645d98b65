//! Child processes with a deadline: each runs in a process group of its own, and the whole group
//! is killed when it finishes or when its deadline passes, so nothing it started outlives it.
//! The command-line engine runs a system under test this way; the `code_tests` oracle runs a
//! model's code this way, inside the [`Confinement`] it asks for.
//!
//! This module knows nothing of engines or oracles: it starts, waits, reads and kills.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How often a running child is looked at for exit or deadline.
const POLL: Duration = Duration::from_millis(5);

/// What a child may use beyond time. The default confines nothing (the command engine's case).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Confinement {
    /// Largest address space, in bytes (`RLIMIT_AS`), where the system has one.
    pub(crate) memory_bytes: Option<u64>,
    /// Largest file the child may write, in bytes (`RLIMIT_FSIZE`).
    pub(crate) file_bytes: Option<u64>,
    /// How much of each of stdout and stderr is kept; the rest is read and dropped.
    pub(crate) output_bytes: usize,
    /// Start the child in a network namespace of its own (no interface but a loopback that is
    /// down), where [`network_isolation`] says this machine allows it.
    pub(crate) isolate_network: bool,
}

impl Default for Confinement {
    fn default() -> Self {
        Self { memory_bytes: None, file_bytes: None, output_bytes: usize::MAX, isolate_network: false }
    }
}

/// How a child ended.
#[derive(Debug)]
pub(crate) struct Ended {
    /// Its exit status; `None` when the deadline passed first and the group was killed.
    pub(crate) status: Option<ExitStatus>,
    pub(crate) stdout: Vec<u8>,
    pub(crate) stderr: Vec<u8>,
    /// Whether the child wrote more to stdout than the confinement keeps.
    pub(crate) stdout_truncated: bool,
    /// Whether the child wrote more to stderr than the confinement keeps.
    pub(crate) stderr_truncated: bool,
}

impl Ended {
    pub(crate) fn timed_out(&self) -> bool {
        self.status.is_none()
    }

    /// The signal that ended the child, if one did.
    pub(crate) fn signal(&self) -> Option<i32> {
        self.status.and_then(signal_of)
    }
}

/// Runs `command` (stdin closed, stdout and stderr read) in a process group of its own until it
/// exits or `deadline` passes; past it, the whole group is killed and `status` is `None`.
/// An error is a child that could not be started (or waited for).
pub(crate) fn run_until(
    command: &mut Command,
    deadline: Instant,
    confinement: Confinement,
) -> std::io::Result<Ended> {
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    #[cfg(unix)]
    {
        std::os::unix::process::CommandExt::process_group(command, 0);
        if confinement != Confinement::default() {
            confine(command, confinement);
        }
    }
    let mut child = command.spawn()?;
    let keep = confinement.output_bytes;
    let out = Drain::start(child.stdout.take().map(|p| Box::new(p) as Box<dyn PipeEnd>), keep);
    let err = Drain::start(child.stderr.take().map(|p| Box::new(p) as Box<dyn PipeEnd>), keep);
    let waited = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(Some(status)),
            Ok(None) if Instant::now() >= deadline => break Ok(None),
            Ok(None) => std::thread::sleep(POLL),
            Err(e) => break Err(e),
        }
    };
    // The group goes in every case: past the deadline everything it started, after a normal
    // exit whatever it left behind holding our pipes open.
    kill_group(&child);
    if !matches!(waited, Ok(Some(_))) {
        let _ = child.wait();
    }
    // A process that left the group (`setsid`) and still holds a pipe would keep the read open
    // for as long as it lives: after a short grace it is found by the pipe it holds and killed,
    // and if even that fails the read is abandoned with what it had.
    if !(out.finished_within(PIPE_GRACE) && err.finished_within(PIPE_GRACE)) {
        kill_pipe_holders(&[&out, &err]);
        out.finished_within(PIPE_GRACE);
        err.finished_within(PIPE_GRACE);
    }
    let (stdout, out_cut) = out.take();
    let (stderr, err_cut) = err.take();
    Ok(Ended { status: waited?, stdout, stderr, stdout_truncated: out_cut, stderr_truncated: err_cut })
}

/// How long a pipe may stay open after its process group is gone.
const PIPE_GRACE: Duration = Duration::from_millis(500);

/// A read end of a child's pipe.
trait PipeEnd: Read + Send + 'static {
    /// The pipe's name in `/proc/<pid>/fd` (`pipe:[inode]`), where the system has one.
    fn proc_name(&self) -> Option<std::ffi::OsString>;
}

#[cfg(unix)]
impl<T: Read + Send + 'static + std::os::fd::AsRawFd> PipeEnd for T {
    fn proc_name(&self) -> Option<std::ffi::OsString> {
        std::fs::read_link(format!("/proc/self/fd/{}", self.as_raw_fd())).ok().map(PathBuf::into_os_string)
    }
}

#[cfg(not(unix))]
impl<T: Read + Send + 'static> PipeEnd for T {
    fn proc_name(&self) -> Option<std::ffi::OsString> {
        None
    }
}

/// A thread reading one pipe to its end, keeping its head: a chatty child never blocks on a
/// full pipe, and memory never grows past the cap.
struct Drain {
    kept: std::sync::Arc<std::sync::Mutex<(Vec<u8>, bool)>>,
    done: std::sync::mpsc::Receiver<()>,
    finished: std::cell::Cell<bool>,
    proc_name: Option<std::ffi::OsString>,
}

impl Drain {
    fn start(pipe: Option<Box<dyn PipeEnd>>, keep: usize) -> Self {
        let kept = std::sync::Arc::new(std::sync::Mutex::new((Vec::new(), false)));
        let (tx, done) = std::sync::mpsc::channel();
        let proc_name = pipe.as_ref().and_then(|p| p.proc_name());
        let shared = std::sync::Arc::clone(&kept);
        std::thread::spawn(move || {
            if let Some(mut p) = pipe {
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    match p.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let mut k = shared.lock().unwrap_or_else(|e| e.into_inner());
                            let room = keep.saturating_sub(k.0.len()).min(n);
                            k.0.extend_from_slice(&buf[..room]);
                            k.1 |= room < n;
                        }
                    }
                }
            }
            let _ = tx.send(());
        });
        Self { kept, done, finished: std::cell::Cell::new(false), proc_name }
    }

    /// Whether the pipe reached its end, waiting at most `grace` for it.
    fn finished_within(&self, grace: Duration) -> bool {
        if !self.finished.get() {
            self.finished.set(self.done.recv_timeout(grace).is_ok());
        }
        self.finished.get()
    }

    /// What was read, and whether more was written than kept.
    fn take(self) -> (Vec<u8>, bool) {
        std::mem::take(&mut *self.kept.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Kills every other process that holds the write end of an unfinished pipe (a descendant
/// that left the process group), found through `/proc/*/fd`.
#[cfg(target_os = "linux")]
fn kill_pipe_holders(drains: &[&Drain]) {
    let names: Vec<&std::ffi::OsString> =
        drains.iter().filter(|d| !d.finished.get()).filter_map(|d| d.proc_name.as_ref()).collect();
    if names.is_empty() {
        return;
    }
    let me = std::process::id();
    let Ok(procs) = std::fs::read_dir("/proc") else { return };
    for entry in procs.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else { continue };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|l| names.iter().any(|n| l.as_os_str() == n.as_os_str()))
        });
        if holds && let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn kill_pipe_holders(_drains: &[&Drain]) {}

/// Sets the limits in the child between fork and exec.
#[cfg(unix)]
fn confine(command: &mut Command, c: Confinement) {
    use rustix::process::{Resource, Rlimit, setrlimit};
    let isolate = c.isolate_network && network_isolation().is_ok();
    let limit = |bytes: u64| Rlimit { current: Some(bytes), maximum: Some(bytes) };
    let pre_exec = move || -> std::io::Result<()> {
        if let Some(bytes) = c.memory_bytes {
            setrlimit(Resource::As, limit(bytes))?;
        }
        if let Some(bytes) = c.file_bytes {
            setrlimit(Resource::Fsize, limit(bytes))?;
        }
        // A crash of the code under test leaves no core file behind.
        setrlimit(Resource::Core, limit(0))?;
        if isolate {
            unshare_network()?;
        }
        Ok(())
    };
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // calls are allowed: it makes raw system calls (setrlimit, unshare) through rustix, which
    // neither allocates nor takes locks, and returns errors as raw OS error codes.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(command, pre_exec);
    }
}

/// Moves the calling (single-threaded, just forked) process into a user namespace of its own,
/// which lets an unprivileged user create a network namespace, and into a network namespace.
#[cfg(target_os = "linux")]
fn unshare_network() -> std::io::Result<()> {
    use rustix::thread::{UnshareFlags, unshare_unsafe};
    // SAFETY: neither flag is `FILES`, the one that can strand file descriptors between threads;
    // the caller is a forked child with one thread.
    unsafe { unshare_unsafe(UnshareFlags::NEWUSER | UnshareFlags::NEWNET) }?;
    Ok(())
}

#[cfg(all(unix, not(target_os = "linux")))]
fn unshare_network() -> std::io::Result<()> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

/// Whether children can be started without a network here, and why not where they cannot:
/// checked once per process by starting `sh -c :` in a network namespace of its own.
pub(crate) fn network_isolation() -> Result<(), &'static NoIsolation> {
    static PROBE: OnceLock<Result<(), NoIsolation>> = OnceLock::new();
    PROBE.get_or_init(probe_network_isolation).as_ref().map(|_| ())
}

/// Why children cannot be started without a network here.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NoIsolation {
    #[error("no `sh` on PATH to try it with")]
    NoShell,
    #[error("`sh -c :` in a network namespace of its own ended with {0}")]
    Ended(std::process::ExitStatus),
    #[error("this machine refuses a network namespace to an unprivileged process ({0})")]
    Refused(#[source] std::io::Error),
    #[cfg(not(target_os = "linux"))]
    #[error("network namespaces exist only on Linux")]
    NotLinux,
}

#[cfg(target_os = "linux")]
fn probe_network_isolation() -> Result<(), NoIsolation> {
    let sh = find_program("sh").ok_or(NoIsolation::NoShell)?;
    let mut command = Command::new(sh);
    command.args(["-c", ":"]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    // SAFETY: as in `confine`: a raw system call between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, unshare_network);
    }
    match command.status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(NoIsolation::Ended(s)),
        Err(e) => Err(NoIsolation::Refused(e)),
    }
}

#[cfg(not(target_os = "linux"))]
fn probe_network_isolation() -> Result<(), NoIsolation> {
    Err(NoIsolation::NotLinux)
}

/// Where `program` is: itself when it is a path, else the first match on `PATH`.
pub(crate) fn find_program(program: &str) -> Option<PathBuf> {
    let p = Path::new(program);
    if p.components().count() > 1 {
        return p.is_file().then(|| p.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(program)).find(|c| c.is_file())
}

#[cfg(unix)]
fn kill_group(child: &std::process::Child) {
    let pid = rustix::process::Pid::from_child(child);
    // ESRCH (the group is already gone) is the normal case after a clean exit.
    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
}

#[cfg(not(unix))]
fn kill_group(child: &std::process::Child) {
    let _ = child;
}

#[cfg(unix)]
pub(crate) fn signal_of(status: ExitStatus) -> Option<i32> {
    std::os::unix::process::ExitStatusExt::signal(&status)
}

#[cfg(not(unix))]
pub(crate) fn signal_of(_status: ExitStatus) -> Option<i32> {
    None
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    fn soon(secs: u64) -> Instant {
        Instant::now() + Duration::from_secs(secs)
    }

    #[test]
    fn a_finished_child_gives_its_status_and_output() {
        let e = run_until(&mut sh("echo out; echo err >&2; exit 3"), soon(10), Confinement::default())
            .expect("sh starts");
        assert_eq!(e.status.and_then(|s| s.code()), Some(3));
        assert_eq!((e.stdout.as_slice(), e.stderr.as_slice()), (&b"out\n"[..], &b"err\n"[..]));
        assert!(!e.stdout_truncated && !e.stderr_truncated && !e.timed_out());
    }

    #[test]
    fn past_its_deadline_the_whole_group_is_killed() {
        let started = Instant::now();
        // The grandchild holds the pipe: only killing the group ends the read.
        let e = run_until(&mut sh("echo partial; sleep 30 & sleep 30"), soon(1), Confinement::default())
            .expect("sh starts");
        assert!(e.timed_out());
        assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
        assert_eq!(e.stdout, b"partial\n");
    }

    #[test]
    fn output_past_the_cap_is_dropped_and_said() {
        let c = Confinement { output_bytes: 10, ..Confinement::default() };
        let e = run_until(&mut sh("head -c 100000 /dev/zero"), soon(10), c).expect("sh starts");
        assert_eq!(e.stdout.len(), 10);
        assert!(e.stdout_truncated && !e.stderr_truncated);
    }

    #[test]
    fn a_descendant_that_left_the_group_cannot_hold_the_trial() {
        let Some(setsid) = find_program("setsid") else {
            eprintln!("not checked: no setsid on PATH");
            return;
        };
        let started = Instant::now();
        // The grandchild starts a session of its own, out of the group's reach, keeps stdout
        // open and prints its pid; the child answers and exits at once.
        let script = format!("{} sh -c 'echo $$; exec sleep 60' & echo answer; wait", setsid.display());
        let e =
            run_until(&mut sh(&format!("{script} & sleep 0.3; exit 0")), soon(30), Confinement::default())
                .expect("sh starts");
        assert!(started.elapsed() < Duration::from_secs(5), "held for {:?}", started.elapsed());
        let text = String::from_utf8_lossy(&e.stdout);
        assert!(text.contains("answer"), "{text}");
        // The escaped process is gone, not merely let go.
        let pid = text.lines().find_map(|l| l.trim().parse::<u32>().ok()).expect("the grandchild's pid");
        std::thread::sleep(Duration::from_millis(200));
        let status = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(status.is_empty() || status.contains(") Z "), "pid {pid} still runs: {status}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_limits_are_the_childs_own() {
        let c = Confinement {
            memory_bytes: Some(64 << 20),
            file_bytes: Some(1 << 20),
            output_bytes: 1 << 16,
            isolate_network: true,
        };
        let e = run_until(&mut sh("cat /proc/self/limits /proc/net/dev"), soon(10), c).expect("sh starts");
        let text = String::from_utf8_lossy(&e.stdout);
        let limit = |name: &str| {
            let line = text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name}: {text}"));
            line.split_whitespace().rev().nth(2).unwrap_or_default().to_string()
        };
        assert_eq!(limit("Max address space"), (64u64 << 20).to_string());
        assert_eq!(limit("Max file size"), (1u64 << 20).to_string());
        assert_eq!(limit("Max core file size"), "0");
        // Our own limits are untouched.
        let ours = std::fs::read_to_string("/proc/self/limits").expect("limits read");
        assert!(!ours.contains(&(64u64 << 20).to_string()), "{ours}");
        // /proc/net/dev names one interface a line, before a colon; the limits have no colon.
        let interfaces: Vec<&str> =
            text.lines().filter_map(|l| l.split_once(':')).map(|(name, _)| name.trim()).collect();
        match network_isolation() {
            Ok(()) => assert_eq!(interfaces, ["lo"], "only a loopback, and it down: {text}"),
            Err(why) => eprintln!("network isolation not checked: {why}"),
        }
    }
}
