//! `worker_nice` reaches the edge's loop workers' threads, and only theirs: the allocator
//! link and metrics threads keep the process's value.

use shake_testkit::scratch::Scratch;
use shake_testkit::servers::Edge;

/// (thread name, field) of every thread of process `pid`, the field counted from the state in
/// `/proc/PID/task/TID/stat` (the third field; the nice value is 16 after it, the scheduling
/// policy 38, where 1 is FIFO).
fn thread_stat_field(pid: u32, after_state: usize) -> Vec<(String, i64)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .filter_map(|task| {
            let dir = task.ok()?.path();
            let name = std::fs::read_to_string(dir.join("comm")).ok()?.trim().to_owned();
            let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
            // The name in parentheses may hold spaces: count after the last ')'.
            let (_, rest) = stat.rsplit_once(')')?;
            Some((name, rest.split_whitespace().nth(after_state)?.parse().ok()?))
        })
        .collect()
}

const NICE: usize = 16;
const POLICY: usize = 38;

/// Reads `read` until `done` holds of it or 10 s pass (the edge reports ready before its
/// workers have started), and returns the last reading.
fn once_settled<T>(read: impl Fn() -> T, done: impl Fn(&T) -> bool) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let value = read();
        if done(&value) || std::time::Instant::now() >= deadline {
            return value;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn the_workers_run_at_the_configured_nice_value_and_the_other_threads_do_not() {
    let scratch = Scratch::new("edge-nice");
    // No allocator is needed for the workers to start (the link keeps trying meanwhile).
    let path = scratch.edge_config("127.0.0.1:9".parse().unwrap(), "");
    let text = std::fs::read_to_string(&path).unwrap();
    // Raising the value (less favoured) needs no privilege, so the test runs as anyone.
    std::fs::write(&path, text.replace("workers = 2\n", "workers = 2\nworker_nice = 7\n")).unwrap();
    let edge = Edge::spawn(Edge::command(&path)).unwrap();
    let threads = once_settled(
        || thread_stat_field(edge.process.pid(), NICE),
        // The allocator link's thread may start after the workers: wait for it too.
        |threads| {
            threads.iter().filter(|(n, nice)| n.starts_with("edge-worker") && *nice == 7).count()
                == 2
                && threads.iter().any(|(name, _)| name == "allocator-link")
        },
    );
    let workers: Vec<_> =
        threads.iter().filter(|(name, _)| name.starts_with("edge-worker")).collect();
    assert_eq!(workers.len(), 2, "{threads:?}");
    assert!(workers.iter().all(|(_, nice)| *nice == 7), "{threads:?}");
    let nice_of = |thread: &str| threads.iter().find(|(name, _)| name == thread).map(|t| t.1);
    assert_eq!(nice_of("allocator-link"), nice_of("shake-edge"), "{threads:?}");
    assert_ne!(nice_of("shake-edge"), Some(7), "{threads:?}");
}

/// The effective user of this test is root (who holds `CAP_SYS_NICE`).
fn running_as_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap();
    uid.split_whitespace().nth(1) == Some("0")
}

#[test]
fn fifo_workers_run_real_time_with_the_privilege_and_refuse_to_start_without() {
    let scratch = Scratch::new("edge-fifo");
    let path = scratch.edge_config("127.0.0.1:9".parse().unwrap(), "");
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replace("workers = 2\n", "workers = 2\nworker_fifo_priority = 5\n");
    std::fs::write(&path, text).unwrap();
    if running_as_root() {
        let edge = Edge::spawn(Edge::command(&path)).unwrap();
        let fifo_in = |policies: &[(String, i64)], name: &str| {
            policies.iter().filter(|(n, policy)| n.starts_with(name) && *policy == 1).count()
        };
        let policies = once_settled(
            || thread_stat_field(edge.process.pid(), POLICY),
            |policies| {
                fifo_in(policies, "edge-worker") == 2
                    && policies.iter().any(|(name, _)| name == "allocator-link")
            },
        );
        let fifo = |name: &str| fifo_in(&policies, name);
        assert_eq!(fifo("edge-worker"), 2, "{policies:?}");
        let link_policy = policies.iter().find(|(name, _)| name == "allocator-link");
        assert_eq!(link_policy.map(|(_, policy)| *policy), Some(0), "{policies:?}");
    } else {
        let out = std::process::Command::new(shake_testkit::processes::bin("shake-edge"))
            .arg("run")
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{said}");
        assert!(said.contains("worker_fifo_priority = 5"), "{said}");
    }
}
