//! What /proc says about processes: CPU time, memory, the process tree, and the agents a
//! benchmark workspace left running (so every one of them can be killed at the end).

use std::path::Path;

/// Clock ticks per second of the CPU times in /proc (`getconf CLK_TCK`; 100 on Linux).
pub fn clk_tck() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// The fields of /proc/PID/stat after the command name: index 0 is the state (field 3).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// utime + stime of a process, in seconds.
pub fn cpu_seconds(pid: u32, tck: f64) -> Option<f64> {
    let f = stat_fields(pid)?;
    let t = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(t as f64 / tck)
}

/// CPU seconds of the calling process's waited-for children (cutime + cstime).
pub fn children_cpu_seconds(tck: f64) -> f64 {
    let Some(f) = stat_fields(std::process::id()) else { return 0.0 };
    let g = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    (g(13) + g(14)) as f64 / tck
}

pub fn ppid(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// (busy, total) jiffies of the whole machine, from the first line of /proc/stat.
pub fn machine_ticks() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> =
        s.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

fn kb_field(path: &str, field: &str) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|x| x.parse().ok())
}

/// Resident set size, KiB.
pub fn rss_kb(pid: u32) -> Option<u64> {
    kb_field(&format!("/proc/{pid}/status"), "VmRSS:")
}

/// Proportional set size (shared pages divided among the processes sharing them), KiB.
pub fn pss_kb(pid: u32) -> Option<u64> {
    kb_field(&format!("/proc/{pid}/smaps_rollup"), "Pss:")
}

fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

/// Every process below `root` whose executable is `root`'s own (for corral: the
/// supervisor's launcher and its per-attempt shims; agents run other programs).
pub fn same_exe_descendants(root: u32) -> Vec<u32> {
    let exe = |p: u32| std::fs::read_link(format!("/proc/{p}/exe")).ok();
    let Some(root_exe) = exe(root) else { return vec![] };
    let all: Vec<(u32, u32)> = pids().into_iter().filter_map(|p| Some((p, ppid(p)?))).collect();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(all.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    found.into_iter().skip(1).filter(|p| exe(*p).as_ref() == Some(&root_exe)).collect()
}

/// The environment variable that marks the peer's tasks as the harness's (corral's agents
/// are known by their `CORRAL_DATA_DIR`).
pub const MARK: &str = "CORRAL_BENCH_MARK";

/// Kills (SIGKILL, whole process group) every process whose environment says it is an agent
/// of a workspace under `dir` (`CORRAL_DATA_DIR=<dir>/...`, or the harness's own mark on a
/// peer's task). Returns how many process groups were found.
pub fn reap_agents(dir: &Path) -> usize {
    let prefixes = [format!("CORRAL_DATA_DIR={}/", dir.display()), format!("{MARK}={}/", dir.display())];
    let me = std::process::id();
    let mut groups = std::collections::BTreeSet::new();
    for p in pids() {
        if p == me {
            continue;
        }
        let Ok(env) = std::fs::read(format!("/proc/{p}/environ")) else { continue };
        if env.split(|b| *b == 0).any(|v| prefixes.iter().any(|p| v.starts_with(p.as_bytes())))
            && let Some(pgid) = stat_fields(p).and_then(|f| f.get(2)?.parse::<i32>().ok())
        {
            groups.insert(pgid);
        }
    }
    let own_group = stat_fields(me).and_then(|f| f.get(2)?.parse::<i32>().ok());
    let targets: Vec<String> =
        groups.iter().filter(|g| Some(**g) != own_group && **g > 1).map(|g| format!("-{g}")).collect();
    for chunk in targets.chunks(500) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--"])
            .args(chunk)
            .stderr(std::process::Stdio::null())
            .status();
    }
    groups.len()
}

/// /proc/loadavg's first three fields.
pub fn loadavg() -> String {
    let l = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}
