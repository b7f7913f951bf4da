//! Aggregating handoffs: `corral aggregate --json` over 1,000 generated handoffs of 10
//! findings each, and the seed's jq loop over the same files.

use crate::clock;
use crate::measure::SEED_CAP;
use crate::stats::summarize;
use crate::target::Sizes;
use crate::tools::{Corral, Tool, output, run_capped};
use crate::{Result, RunArgs};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

#[derive(Debug, Default)]
pub struct Aggregation {
    pub handoffs: usize,
    pub findings_each: usize,
    pub handoff_bytes: u64,
    pub runs: Vec<f64>,
    pub exit_code: Option<i32>,
    /// The report's `counts` object.
    pub counts: Value,
    pub report_bytes: usize,
    /// The seed's loop: handoffs given, handoffs it got through (fewer when stopped at
    /// SEED_CAP), run time in ms.
    pub seed: Option<(usize, usize, f64)>,
}

/// xorshift64*, seeded: the same handoffs on every run.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

const FINDINGS_EACH: usize = 10;
const KEYS: usize = 150;
const ASPECTS: [&str; 5] = ["latency_ms", "owner", "status", "max_connections", "version"];
const KINDS: [&str; 4] = ["test", "measurement", "citation", "reasoning"];

/// One handoff: 5 strings (two from a pool of 40 shared notes, so many repeat across agents)
/// and 5 structured findings on 750 keys (150 components x 5 aspects), each key claimed by
/// 6 or 7 agents; about 70% of the claims agree on a key's value, the rest do not, with
/// evidence of every kind (or none), so the report has conflicts resolved by evidence, by
/// majority, and unresolved ones.
fn handoff(i: usize, rng: &mut Rng) -> Value {
    let id = format!("agent-{i:03}-IMPLEMENTER");
    let mut findings = Vec::new();
    for k in 0..2 {
        findings.push(json!(format!("shared note {}", rng.below(20) + k as u64 * 20)));
    }
    for k in 0..3 {
        findings.push(json!(format!("{id}: observation {k} on module {}", rng.below(300))));
    }
    for (k, aspect) in ASPECTS.iter().enumerate() {
        let key = format!("component{}.{aspect}", (i * 7 + k * 13) % KEYS);
        let agree = rng.below(10) < 7;
        let value = match (*aspect, agree) {
            ("latency_ms", true) => json!(40 + (i * 7 + k * 13) % KEYS),
            ("latency_ms", false) => json!(rng.below(500)),
            ("owner", true) => json!(format!("team-{}", (i * 7 + k * 13) % 7)),
            ("owner", false) => json!(format!("team-{}", rng.below(7))),
            ("status", true) => json!("stable"),
            ("status", false) => json!(["deprecated", "experimental"][rng.below(2) as usize]),
            ("max_connections", true) => json!(100),
            ("max_connections", false) => json!(50 * (1 + rng.below(4))),
            (_, true) => json!("2.1.0"),
            (_, false) => json!(format!("2.{}.0", rng.below(3))),
        };
        let n_ev = rng.below(3) as usize;
        let evidence: Vec<Value> = (0..n_ev)
            .map(|e| {
                let kind = KINDS[rng.below(KINDS.len() as u64) as usize];
                let mut ev = json!({ "kind": kind, "ref": format!("{kind}-{i}-{k}-{e}") });
                if kind == "test" {
                    ev["passed"] = json!(rng.below(10) < 8);
                }
                ev
            })
            .collect();
        let mut f = json!({ "key": key, "value": value, "claim": format!("{key} is {value}") });
        if !evidence.is_empty() {
            f["evidence"] = json!(evidence);
        }
        findings.push(f);
    }
    json!({
        "fromAgent": id,
        "toAgent": "ORCHESTRATOR",
        "status": "complete",
        "deliverables": {
            "files": [],
            "findings": findings,
            "decisions": [format!("kept module {} as it is", rng.below(40)), "no schema change".to_string()],
        },
        "memoryCandidate": {
            "pattern": format!("retry pattern {}", rng.below(25)),
            "lesson": "rate limits clear after a backoff",
        },
    })
}

fn write_handoffs(dir: &Path, n: usize) -> Result<u64> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let base = clock::now_ms() - 3_600_000;
    let mut bytes = 0;
    for i in 1..=n {
        let h = handoff(i, &mut rng);
        let text = serde_json::to_string_pretty(&h).map_err(|e| e.to_string())? + "\n";
        bytes += text.len() as u64;
        let ts = clock::compact_ms(base + i as i64 * 1234);
        let name = format!("handoff-{ts}-{}-to-ORCHESTRATOR.json", h["fromAgent"].as_str().unwrap_or(""));
        std::fs::write(dir.join(name), text).map_err(|e| e.to_string())?;
    }
    Ok(bytes)
}

/// `corral aggregate --json --out FILE` over `handoffs` handoff files written
/// straight into the data dir (agents corral never ran, which it aggregates all the same),
/// then the seed's loop over the same files.
pub fn aggregation(args: &RunArgs, tmp: &Path, p: &Sizes) -> Result<Aggregation> {
    let c = Corral::with_config(&args.corral, tmp.join("aggregate-corral"), "data_dir = \"data\"\n")?;
    let mut r = Aggregation { handoffs: p.handoffs, findings_each: FINDINGS_EACH, ..Default::default() };
    r.handoff_bytes = write_handoffs(&c.data_dir().join("handoffs"), p.handoffs)?;
    output(c.status_json())?; // starts the supervisor
    let out = c.ws.join("aggregate.json");
    let run = || -> Result<(f64, Option<i32>)> {
        let mut cmd = c.cmd(&["aggregate", "--json", "--out"]);
        cmd.arg(&out).stdout(Stdio::null());
        let t = Instant::now();
        let o = cmd.output().map_err(|e| e.to_string())?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        match o.status.code() {
            Some(0 | 1) => Ok((ms, o.status.code())),
            _ => Err(format!("corral aggregate: {}: {}", o.status, String::from_utf8_lossy(&o.stderr).trim())),
        }
    };
    eprintln!("(aggregate) corral aggregate over {} handoffs, 1 warm-up + {} runs", p.handoffs, p.aggregate_runs);
    run()?;
    for _ in 0..p.aggregate_runs {
        let (ms, code) = run()?;
        r.runs.push(ms);
        r.exit_code = code;
    }
    let text = std::fs::read(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    r.report_bytes = text.len();
    let v: Value = serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", out.display()))?;
    r.counts = v["counts"].clone();
    if r.counts["aggregated"].as_u64() != Some(p.handoffs as u64) {
        return Err(format!("corral aggregate aggregated {} of {} handoffs", r.counts["aggregated"], p.handoffs));
    }
    // The seed's loop, in a workspace holding the first `seed_handoffs` of the same files.
    let seed_ws = if p.seed_handoffs >= p.handoffs {
        c.ws.clone()
    } else {
        let ws = tmp.join("aggregate-seed");
        let dir = ws.join("data/handoffs");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let mut files: Vec<PathBuf> = std::fs::read_dir(c.data_dir().join("handoffs"))
            .map_err(|e| e.to_string())?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        files.sort();
        for f in files.iter().take(p.seed_handoffs) {
            std::fs::copy(f, dir.join(f.file_name().expect("file"))).map_err(|e| e.to_string())?;
        }
        ws
    };
    eprintln!("(aggregate) the seed's aggregation loop over {} handoffs", p.seed_handoffs);
    let mut cmd = Command::new("bash");
    cmd.arg(&args.aggregate_script).current_dir(&seed_ws);
    let (text, ran, finished) = run_capped(cmd, SEED_CAP)?;
    let seen =
        String::from_utf8_lossy(&text).lines().filter(|l| l.starts_with("Processing handoff from: agent-")).count();
    if finished && seen != p.seed_handoffs {
        return Err(format!("the seed's loop processed {seen} handoffs, expected {}", p.seed_handoffs));
    }
    if !finished {
        eprintln!("(aggregate) stopped after {:.0} s, {seen} of {} handoffs done", ran.as_secs_f64(), p.seed_handoffs);
    }
    r.seed = Some((p.seed_handoffs, seen, ran.as_secs_f64() * 1e3));
    Ok(r)
}

impl Aggregation {
    pub fn to_json(&self) -> Value {
        json!({
            "handoffs": self.handoffs, "findingsEach": self.findings_each, "handoffBytes": self.handoff_bytes,
            "runsMs": summarize(&self.runs).map(|s| s.to_json()), "samples": self.runs, "exitCode": self.exit_code,
            "counts": self.counts, "reportBytes": self.report_bytes,
            "seed": self.seed.map(|(n, done, ms)| json!({ "handoffs": n, "done": done, "ms": ms })),
        })
    }
}
