//! A git worktree per agent, verify before "complete", aggregation from git, merge and
//! clean: each test makes its own git repository and runs the real binary against it.

mod common;
use common::*;
use std::path::Path;
use std::process::Command;

const GIT_ID: [(&str, &str); 4] = [
    ("GIT_AUTHOR_NAME", "t"),
    ("GIT_AUTHOR_EMAIL", "t@example.com"),
    ("GIT_COMMITTER_NAME", "t"),
    ("GIT_COMMITTER_EMAIL", "t@example.com"),
];

fn git(dir: &Path, args: &[&str]) -> String {
    let o = Command::new("git").arg("-C").arg(dir).args(args).envs(GIT_ID).output().expect("git runs");
    assert!(o.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// A workspace that is a git repository with one commit (its config and a `.gitignore`
/// for the data dir committed, so its working tree starts clean).
fn repo(config: &str) -> Ws {
    let ws = Ws::with_config(Some(config));
    std::fs::write(ws.path().join(".gitignore"), ".corral/\n").unwrap();
    let lines = "one\ntwo\nthree\nfour\nfive\nsix\nseven\n";
    std::fs::write(ws.path().join("shared.txt"), lines).unwrap();
    std::fs::write(ws.path().join("other.txt"), lines).unwrap();
    git(ws.path(), &["init", "-q", "-b", "main"]);
    git(ws.path(), &["add", "-A"]);
    git(ws.path(), &["commit", "-qm", "base"]);
    ws
}

/// `sh -c` that commits whatever the agent changed in its worktree.
fn commit(msg: &str) -> String {
    let ids: String = GIT_ID.iter().map(|(k, v)| format!("{k}={v} ")).collect();
    format!("git add -A && {ids} git commit -qm '{msg}'")
}

fn log_of(ws: &Ws, id: &str) -> String {
    ws.ok(&["logs", id])
}

const WT: &str = "[health]\nmax_concurrent = 50\nbreaker_failures = 0\n[defaults]\nmax_retries = 0\n\
                  [roles.W]\nisolation = \"worktree\"\nports_per_agent = 2\n";

#[test]
fn six_worktree_agents_each_get_a_branch_their_own_files_and_disjoint_ports() {
    let ws = repo(WT);
    let head = git(ws.path(), &["rev-parse", "HEAD"]);
    // Each writes its file, waits for the others to have written theirs, and checks that
    // its tree holds its own file alone.
    let script = format!(
        "echo PORT=$CORRAL_PORT; echo \"$CORRAL_AGENT_ID\" > \"from-$CORRAL_AGENT_ID.txt\"; sleep 0.5; \
         test \"$(ls | grep -c '^from-')\" = 1 || exit 3; test \"$PWD\" = \"$CORRAL_WORKTREE\" || exit 4; {}",
        commit("agent work")
    );
    let ids: Vec<String> = (0..6).map(|_| ws.spawn("W", &["sh", "-c", &script])).collect();
    for id in &ids {
        ws.wait_state(id, &["complete"], SECS(30));
    }
    let mut ports = Vec::new();
    for id in &ids {
        let files = git(ws.path(), &["diff", "--name-only", &format!("main...corral/{id}")]);
        assert_eq!(files.trim(), format!("from-{id}.txt"), "branch corral/{id} has the agent's own file alone");
        let log = log_of(&ws, id);
        let p: u32 = log.lines().find_map(|l| l.strip_prefix("PORT=")).expect("CORRAL_PORT set").parse().unwrap();
        ports.push(p);
    }
    ports.sort();
    assert!(ports.windows(2).all(|w| w[1] >= w[0] + 2), "two ports each, never shared: {ports:?}");
    assert_eq!(git(ws.path(), &["status", "--porcelain"]), "", "the workspace's own tree is untouched");
    assert_eq!(git(ws.path(), &["rev-parse", "HEAD"]), head);
    assert!(!ws.path().join(format!("from-{}.txt", ids[0])).exists());
}

#[test]
fn worktree_spawn_outside_a_repository_is_refused_and_setup_failure_is_permanent() {
    let ws = Ws::with_config(Some(WT));
    let o = ws.run(&["spawn", "--role", "W", "--task", "t", "--", "true"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("not inside a git repository") && err.contains("--no-worktree"), "{err}");
    // --no-worktree runs it in place
    let id = ws.ok(&["spawn", "--role", "W", "--no-worktree", "--task", "t", "--", "true"]);
    ws.wait_state(id.trim(), &["complete"], SECS(10));

    let cfg = format!("{WT}max_retries = 3\nworktree_setup = [\"sh\", \"-c\", \"echo no toolchain here; exit 7\"]\n");
    let ws = repo(&cfg);
    let id = ws.spawn("W", &["touch", "ran"]);
    let a = ws.wait_state(&id, &["escalated"], SECS(20));
    let show = ws.show(&id);
    assert_eq!(show["attempts"].as_array().unwrap().len(), 1, "no retry of a failed setup: {show}");
    assert!(show.to_string().contains("no toolchain here"), "the setup's output is in the reason: {a}");
    assert!(!ws.data.join("worktrees").join(&id).exists(), "the failed worktree is removed");
}

#[test]
fn verify_failure_gets_a_corrective_attempt_and_a_pass_is_test_evidence_that_wins() {
    let cfg = "[health]\nmax_concurrent = 50\nbreaker_failures = 0\n\
               [defaults]\nbackoff = { initial = \"100ms\" }\n\
               [roles.V]\nverify = [\"sh\", \"-c\", \"test -f done.txt\"]\nmax_retries = 2\n";
    let ws = Ws::with_config(Some(cfg));
    let claim = |v: &str| format!(r#"{{"key":"db","value":"{v}","evidence":[{{"kind":"reasoning"}}]}}"#);
    // Says complete at once; makes done.txt only when its context carries the verify.
    let script = format!(
        "if grep -q 'test -f done.txt' \"$CORRAL_CONTEXT_FILE\"; then touch done.txt; fi; \
         corral handoff --finding '{}'",
        claim("postgres")
    );
    let v = ws.spawn("V", &["sh", "-c", &script]);
    let other = ws.spawn("W", &["sh", "-c", &format!("corral handoff --finding '{}'", claim("mysql"))]);
    ws.wait_state(&v, &["complete"], SECS(20));
    ws.wait_state(&other, &["complete"], SECS(10));
    let show = ws.show(&v);
    let attempts = show["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{show}");
    assert_eq!(attempts[0]["failureType"], "deliverable");
    let context = std::fs::read_to_string(ws.data.join("context").join(format!("{v}.md"))).unwrap();
    assert!(context.contains("test -f done.txt") && context.contains("exited with code 1"), "{context}");
    assert!(log_of(&ws, &v).contains("corral: verify exited with code 0: passed"));
    let r = ws.json(&["aggregate", "--json"]);
    let c = r["conflicts"].as_array().unwrap().iter().find(|c| c["key"] == "db").expect("a conflict on db").clone();
    assert_eq!(c["resolution"], "evidence", "{c}");
    assert_eq!(c["winner"]["value"], "postgres");
    assert_eq!(c["winner"]["agent"], v.as_str());
}

#[test]
fn verify_runs_a_real_test_suite_in_the_worktree() {
    let cfg = format!("{WT}max_retries = 1\nverify = [\"python3\", \"-m\", \"unittest\", \"-q\"]\n");
    let ws = repo(&cfg);
    std::fs::write(ws.path().join("calc.py"), "def add(a, b):\n    return a - b\n").unwrap();
    std::fs::write(
        ws.path().join("test_calc.py"),
        "import unittest\nfrom calc import add\nclass T(unittest.TestCase):\n    def test_add(self):\n        self.assertEqual(add(2, 2), 4)\n",
    )
    .unwrap();
    git(ws.path(), &["add", "-A"]);
    git(ws.path(), &["commit", "-qm", "a bug"]);
    // The first attempt changes nothing; the corrective one fixes the bug.
    let fix =
        format!("if [ \"$CORRAL_ATTEMPT\" = 2 ]; then sed -i 's/a - b/a + b/' calc.py && {}; fi", commit("fix add"));
    let id = ws.spawn("W", &["sh", "-c", &fix]);
    let a = ws.wait_state(&id, &["complete", "escalated"], SECS(60));
    let log = log_of(&ws, &id);
    assert_eq!(a["status"], "complete", "{log}");
    assert_eq!(ws.show(&id)["attempts"][0]["failureType"], "deliverable");
    assert!(log.contains("AssertionError"), "the failing run is in the log: {log}");
    let fixed = git(ws.path(), &["show", &format!("corral/{id}:calc.py")]);
    assert!(fixed.contains("a + b"), "the fix is on the agent's branch");
    let own = std::fs::read_to_string(ws.path().join("calc.py")).unwrap();
    assert!(own.contains("a - b"), "the workspace's own tree is untouched");
}

#[test]
fn aggregate_reads_branches_a_same_line_change_conflicts_a_same_file_change_merges() {
    let ws = repo(WT);
    let edit = |line: &str, to: &str, file: &str| {
        format!("sed -i 's/^{line}$/{to}/' {file} && {}", commit(&format!("{file}: {line} -> {to}")))
    };
    let a = ws.spawn("W", &["sh", "-c", &edit("two", "two by A", "shared.txt")]);
    let b = ws.spawn("W", &["sh", "-c", &edit("two", "two by B", "shared.txt")]);
    let c = ws.spawn("W", &["sh", "-c", &edit("one", "one by C", "other.txt")]);
    let d = ws.spawn("W", &["sh", "-c", &edit("seven", "seven by D", "other.txt")]);
    for id in [&a, &b, &c, &d] {
        ws.wait_state(id, &["complete"], SECS(30));
    }
    let o = ws.run(&["aggregate", "--json"]);
    assert_eq!(o.status.code(), Some(1), "an unresolved conflict is left to do");
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let conflicts = r["conflicts"].as_array().unwrap();
    assert_eq!(conflicts.len(), 1, "{r:#}");
    let x = &conflicts[0];
    assert_eq!(
        (x["key"].as_str(), x["kind"].as_str(), x["resolution"].as_str()),
        (Some("shared.txt"), Some("file"), Some("unresolved"))
    );
    let reason = x["reason"].as_str().unwrap();
    assert!(
        reason.contains("textual conflict") && reason.contains("two by A") && reason.contains("two by B"),
        "{reason}"
    );
    let agents: Vec<&str> = x["positions"].as_array().unwrap().iter().map(|p| p["agent"].as_str().unwrap()).collect();
    assert_eq!(agents, [a.as_str(), b.as_str()]);
    let overlaps = r["overlaps"].as_array().unwrap();
    assert_eq!(overlaps.len(), 1, "{r:#}");
    assert_eq!(overlaps[0]["file"], "other.txt");
    assert_eq!(overlaps[0]["mergesCleanly"], true);
    let branches = r["branches"].as_array().unwrap();
    assert_eq!(branches.len(), 4);
    assert!(branches.iter().all(|b| b["files"].as_array().unwrap().len() == 1), "{branches:?}");
    let esc = ws.json(&["escalations", "--json"]);
    assert!(esc.as_array().unwrap().iter().any(|e| e["reason"].as_str().unwrap().contains("shared.txt")), "{esc}");
}

#[test]
fn merge_of_five_stops_at_the_fourth_conflict_and_dry_run_changes_nothing() {
    let ws = repo(WT);
    let head = git(ws.path(), &["rev-parse", "HEAD"]);
    let own = |n: u32| format!("echo {n} > own-{n}.txt && {}", commit(&format!("agent {n}")));
    let line =
        |n: u32| format!("sed -i 's/^two$/two by {n}/' shared.txt && {}", commit(&format!("agent {n} edits two")));
    let scripts = [line(1), own(2), own(3), line(4), own(5)];
    let mut ids = Vec::new();
    for s in &scripts {
        // One after the other, so finishing order is spawn order.
        let id = ws.spawn("W", &["sh", "-c", s]);
        ws.wait_state(&id, &["complete"], SECS(30));
        ids.push(id);
    }
    let integration = || git(ws.path(), &["branch", "--list", "corral/integration-*"]);
    let trees = || git(ws.path(), &["worktree", "list"]);
    let before = trees();

    let o = ws.run(&["merge", "--dry-run", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["merged"], serde_json::json!(ids[..3]), "{r:#}");
    assert_eq!(r["stopped"]["agent"], ids[3].as_str());
    assert_eq!(r["stopped"]["files"], serde_json::json!(["shared.txt"]));
    assert_eq!(r["notAttempted"], serde_json::json!([ids[4]]));
    assert_eq!(integration(), "", "a dry run makes no branch");
    assert_eq!(trees(), before);
    assert_eq!(ws.json(&["escalations", "--json"]).as_array().unwrap().len(), 0, "a dry run escalates nothing");

    let o = ws.run(&["merge", "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["merged"], serde_json::json!(ids[..3]), "{r:#}");
    assert_eq!(r["stopped"]["agent"], ids[3].as_str());
    assert_eq!(r["stopped"]["why"], "conflict");
    assert_eq!(r["stopped"]["files"], serde_json::json!(["shared.txt"]));
    assert_eq!(r["notAttempted"], serde_json::json!([ids[4]]));
    let into = r["into"].as_str().unwrap().to_string();
    assert!(into.starts_with("corral/integration-"), "{into}");
    assert_eq!(git(ws.path(), &["rev-parse", &into]).trim(), r["head"].as_str().unwrap());
    let is_in = |id: &str| {
        Command::new("git")
            .arg("-C")
            .arg(ws.path())
            .args(["merge-base", "--is-ancestor", &format!("corral/{id}"), &into])
            .status()
            .unwrap()
            .success()
    };
    assert!(ids[..3].iter().all(|id| is_in(id)), "the first three are in {into}");
    assert!(!is_in(&ids[3]) && !is_in(&ids[4]), "the fourth and fifth are not");
    let third = git(ws.path(), &["rev-parse", &format!("{into}^2")]);
    assert_eq!(
        third,
        git(ws.path(), &["rev-parse", &format!("corral/{}", ids[2])]),
        "the branch is at the third merge"
    );
    let esc = ws.json(&["escalations", "--json"]);
    let esc = esc.as_array().unwrap();
    assert_eq!(esc.len(), 1, "{esc:?}");
    assert_eq!(esc[0]["agentId"], ids[3].as_str());
    assert!(esc[0]["reason"].as_str().unwrap().contains("shared.txt"));
    assert_eq!(git(ws.path(), &["status", "--porcelain"]), "", "the user's tree is untouched");
    assert_eq!(git(ws.path(), &["rev-parse", "HEAD"]), head);
    assert_eq!(trees(), before, "corral's merge worktree is gone");
}

#[test]
fn merge_runs_verify_after_each_merge_in_worktree_dir_and_stops_at_the_first_failure() {
    let trees = tempfile::Builder::new().prefix("corral-trees").tempdir().unwrap();
    let seen = trees.path().join("verify-dirs.log");
    // Each branch passes alone; one.txt and two.txt together fail.
    let verify = format!(
        "pwd >> {}; if [ -f one.txt ] && [ -f two.txt ]; then echo 'one and two clash'; exit 1; fi",
        seen.display()
    );
    let cfg = format!(
        "worktree_dir = \"{}\"\n{WT}verify = [\"sh\", \"-c\", {verify:?}]\n",
        trees.path().join("wt").display()
    );
    let ws = repo(&cfg);
    let mut ids = Vec::new();
    for name in ["one", "two", "three"] {
        let id = ws.spawn("W", &["sh", "-c", &format!("echo {name} > {name}.txt && {}", commit(name))]);
        ws.wait_state(&id, &["complete"], SECS(30));
        ids.push(id);
    }
    assert!(trees.path().join("wt").join(&ids[0]).is_dir(), "agents' worktrees are under worktree_dir");
    let verified_before = std::fs::read_to_string(&seen).unwrap().lines().count();
    let o = ws.run(&["merge", "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["merged"], serde_json::json!([ids[0]]), "{r:#}");
    assert_eq!(r["stopped"]["agent"], ids[1].as_str(), "{r:#}");
    assert_eq!(r["stopped"]["why"], "verify");
    assert!(r["stopped"]["output"].as_str().unwrap().contains("one and two clash"), "{r:#}");
    assert_eq!(r["notAttempted"], serde_json::json!([ids[2]]));
    let into = r["into"].as_str().unwrap();
    assert_eq!(git(ws.path(), &["rev-parse", into]).trim(), r["head"].as_str().unwrap());
    assert_eq!(
        git(ws.path(), &["rev-parse", &format!("{into}^2")]),
        git(ws.path(), &["rev-parse", &format!("corral/{}", ids[0])]),
        "the branch stays at the last good merge"
    );
    let files = git(ws.path(), &["ls-tree", "--name-only", into]);
    assert!(files.contains("one.txt") && !files.contains("two.txt"), "{files}");
    // Verify ran after the first merge and after the second, not for the third, in corral's
    // own integration worktree under worktree_dir.
    let dirs: Vec<String> =
        std::fs::read_to_string(&seen).unwrap().lines().skip(verified_before).map(str::to_string).collect();
    assert_eq!(dirs.len(), 2, "{dirs:?}");
    let merge_root = std::fs::canonicalize(trees.path().join("wt")).unwrap();
    assert!(dirs.iter().all(|d| Path::new(d).starts_with(&merge_root) && d.contains("merge-")), "{dirs:?}");
    assert!(!dirs.iter().any(|d| Path::new(d).exists()), "the integration worktree is removed");
    let esc = ws.json(&["escalations", "--json"]);
    let esc = esc.as_array().unwrap();
    assert_eq!(esc.len(), 1, "{esc:?}");
    assert_eq!(esc[0]["agentId"], ids[1].as_str());
    assert!(esc[0]["reason"].as_str().unwrap().contains("one and two clash"), "{esc:?}");
    assert_eq!(git(ws.path(), &["status", "--porcelain"]), "", "the user's tree is untouched");
}

#[test]
fn worktree_agents_deliverables_are_what_their_branch_holds_not_any_checkout() {
    let ws = repo(WT);
    let main = ws.path().display().to_string();
    // Committed on its branch.
    let committed = ws.spawn(
        "W",
        &["sh", "-c", &format!("echo a > out.txt && {} && corral handoff --deliverable out.txt", commit("out"))],
    );
    // Written into the workspace's own checkout (by relative and absolute name), never committed.
    let elsewhere = ws.spawn(
        "W",
        &[
            "sh",
            "-c",
            &format!("echo b > {main}/b.txt && corral handoff --deliverable b.txt --deliverable {main}/b.txt"),
        ],
    );
    // Committed, and taken off its branch later.
    let later = ws
        .spawn("W", &["sh", "-c", &format!("echo c > c.txt && {} && corral handoff --deliverable c.txt", commit("c"))]);
    ws.wait_state(&committed, &["complete"], SECS(30));
    ws.wait_state(&later, &["complete"], SECS(30));
    let v = ws.wait_state(&elsewhere, &["failed", "escalated"], SECS(30));
    let show = ws.show(&elsewhere);
    assert_eq!(show["attempts"][0]["failureType"], "deliverable", "{show}");
    let reason = show.to_string();
    assert!(reason.contains("not in branch") && reason.contains(&format!("corral/{elsewhere}:b.txt")), "{v} {reason}");
    assert!(ws.path().join("b.txt").exists(), "the file is in the main checkout");

    // In the branch only: its worktree's file gone from disk changes nothing.
    let trees = ws.data.join("worktrees");
    std::fs::remove_file(trees.join(&committed).join("out.txt")).unwrap();
    // Off its branch, present in the main checkout: a deliverable failure.
    let later_tree = trees.join(&later);
    git(&later_tree, &["rm", "-q", "c.txt"]);
    git(&later_tree, &["commit", "-qm", "take c.txt off"]);
    std::fs::write(ws.path().join("c.txt"), "c").unwrap();
    std::fs::write(later_tree.join("c.txt"), "c").unwrap();

    let o = ws.run(&["aggregate", "--json", &committed, &later]);
    assert_eq!(o.status.code(), Some(1), "a deliverable failure makes the result incomplete");
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let failures = r["deliverableFailures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{r:#}");
    assert_eq!(failures[0]["agent"], later.as_str());
    assert_eq!(failures[0]["missing"], serde_json::json!([format!("corral/{later}:c.txt")]), "{r:#}");
    let files =
        |id: &str| r["deliverables"].as_array().unwrap().iter().find(|d| d["agent"] == id).unwrap()["files"].clone();
    assert_eq!(files(&committed)[0]["path"], format!("corral/{committed}:out.txt"), "{r:#}");
    assert_eq!(files(&committed)[0]["state"], "exists", "{r:#}");
}

#[test]
fn kill_9_while_a_cleaned_worktree_is_made_again_makes_it_once_more_before_the_retry_runs() {
    let cfg = format!("{WT}worktree_setup = [\"sh\", \"-c\", \"sleep 0.5; touch .setup-done\"]\n");
    let ws = repo(&cfg);
    let log = ws.path().join("starts.log");
    // The setup's mark is ignored, so the worktree is clean for `corral clean`.
    std::fs::write(ws.path().join(".gitignore"), ".corral/\n.setup-done\n").unwrap();
    git(ws.path(), &["commit", "-qam", "ignore the setup's mark"]);
    // Commits work (never the setup's mark), so its branch is kept when its tree is removed.
    let ids: String = GIT_ID.iter().map(|(k, v)| format!("{k}={v} ")).collect();
    let script = format!(
        "test -f .setup-done || exit 9; echo $CORRAL_AGENT_ID >> {}; echo x >> work.txt && git add work.txt && \
         {ids} git commit -qm work",
        log.display()
    );
    let id = ws.spawn("W", &["sh", "-c", &script]);
    ws.wait_state(&id, &["complete"], SECS(30));
    ws.ok(&["clean", "--worktrees"]);
    let tree = ws.data.join("worktrees").join(&id);
    assert!(!tree.exists());
    ws.ok(&["retry", &id]);
    let pid = ws.daemon_pid();
    // Killed while the worktree is made again (its setup takes 0.5s).
    assert!(wait_until(SECS(10), || tree.exists()));
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert!(wait_until(SECS(5), || !alive(pid)));
    assert!(!tree.join(".setup-done").exists(), "caught half-made");
    ws.wait_state(&id, &["complete"], SECS(30));
    assert_eq!(
        starts(&ws),
        vec![id.clone(), id.clone()],
        "started once before the clean and once after, never in the half-made tree"
    );
    let show = ws.show(&id);
    assert_eq!(show["attempts"].as_array().unwrap().len(), 2, "{show}");
    let dirs: Vec<String> = std::fs::read_dir(ws.data.join("worktrees"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(dirs, vec![id.clone()], "no mark or leftover stays");
}

/// The agents' starts, one line each, written outside their worktrees.
fn starts(ws: &Ws) -> Vec<String> {
    std::fs::read_to_string(ws.path().join("starts.log")).unwrap_or_default().lines().map(str::to_string).collect()
}

#[test]
fn kill_9_while_worktrees_are_made_uses_no_half_made_one_and_leaks_none() {
    let cfg = format!("{WT}worktree_setup = [\"sh\", \"-c\", \"sleep 0.3; touch .setup-done\"]\n");
    let ws = repo(&cfg);
    let log = ws.path().join("starts.log");
    let script = format!("test -f .setup-done || exit 9; echo $CORRAL_AGENT_ID >> {}", log.display());
    let ids: Vec<String> = (0..4).map(|_| ws.spawn("W", &["sh", "-c", &script])).collect();
    let pid = ws.daemon_pid();
    let trees_dir = ws.data.join("worktrees");
    // Killed while the second worktree is being made (each setup takes 0.3s).
    assert!(wait_until(SECS(10), || trees_dir.join(&ids[1]).exists()));
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert!(wait_until(SECS(5), || !alive(pid)));
    assert!(!starts(&ws).contains(&ids[1]), "the second was still being made when the supervisor died");
    assert!(!trees_dir.join(&ids[2]).exists(), "worktrees are made one at a time");
    // What a crash can also leave: a directory no agent owns, a worktree git knows of
    // that no agent owns, and git's record of a worktree whose directory is gone.
    let stray = trees_dir.join("agent-099-W");
    std::fs::create_dir_all(&stray).unwrap();
    // (The killed supervisor's `git worktree add` may still be finishing: git refuses
    // another one meanwhile.)
    let add = |d: &Path| {
        let ok = || {
            Command::new("git")
                .arg("-C")
                .arg(ws.path())
                .args(["worktree", "add", "-q", "--detach"])
                .arg(d)
                .output()
                .unwrap()
                .status
                .success()
        };
        assert!(wait_until(SECS(10), ok), "git worktree add {}", d.display());
    };
    let unowned = trees_dir.join("agent-098-W");
    add(&unowned);
    let vanished = trees_dir.join("agent-097-W");
    add(&vanished);
    std::fs::remove_dir_all(&vanished).unwrap();
    for id in &ids {
        ws.wait_state(id, &["complete"], SECS(30));
    }
    let mut started = starts(&ws);
    started.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(started, want, "each agent started once, in a fully made worktree");
    // The one caught half-made was made again from scratch before it started.
    let events = ws.ok(&["events", "--agent", &ids[1]]);
    let preparing = events.lines().filter(|l| l.contains("\"worktree_preparing\"")).count();
    assert_eq!(preparing, 2, "{events}");
    assert!(ws.show(&ids[1])["attempts"].as_array().unwrap().len() == 1, "no attempt ran in the half-made one");
    assert!(wait_until(SECS(10), || !stray.exists() && !unowned.exists()), "the orphans are pruned");
    let listed = || git(ws.path(), &["worktree", "list", "--porcelain"]);
    assert!(wait_until(SECS(10), || !listed().contains("agent-097-W")), "git's stale record is pruned: {}", listed());
    let listed = listed();
    let trees: Vec<&str> = listed.lines().filter(|l| l.starts_with("worktree ")).collect();
    assert_eq!(trees.len(), 1 + ids.len(), "the main tree and one per agent: {listed}");
    let mut dirs: Vec<String> =
        std::fs::read_dir(&trees_dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    dirs.sort();
    assert_eq!(dirs, want, "one directory per agent, nothing else");
    let branches = git(ws.path(), &["branch", "--list", "corral/*", "--format=%(refname:short)"]);
    let mut branches: Vec<&str> = branches.lines().collect();
    branches.sort();
    let want_branches: Vec<String> = want.iter().map(|id| format!("corral/{id}")).collect();
    assert_eq!(branches, want_branches, "one branch per agent, none leaked");
}

#[test]
fn reconcile_keeps_a_dirty_orphan_and_retry_after_clean_makes_the_worktree_again_on_its_branch() {
    let ws = repo(WT);
    // Each attempt adds a line and commits: a retry continues on the branch.
    let script = format!("echo \"$CORRAL_AGENT_ID\" >> work.txt && {}", commit("work"));
    let kept = ws.spawn("W", &["sh", "-c", &script]);
    let lost = ws.spawn("W", &["sh", "-c", &script]);
    ws.wait_state(&kept, &["complete"], SECS(30));
    ws.wait_state(&lost, &["complete"], SECS(30));
    let r = ws.json(&["clean", "--worktrees", "--json"]);
    let trees_dir = ws.data.join("worktrees");
    assert!(!trees_dir.join(&kept).exists() && !trees_dir.join(&lost).exists(), "{r}");
    git(ws.path(), &["branch", "-D", &format!("corral/{lost}")]);

    let o = ws.run(&["retry", &lost]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&format!("corral/{lost}")) && err.contains("spawn a new agent"), "{err}");
    assert_eq!(ws.agent(&lost)["attempt"], 1, "a refused retry starts nothing");

    ws.ok(&["retry", &kept]);
    ws.wait_state(&kept, &["complete"], SECS(30));
    assert!(trees_dir.join(&kept).is_dir(), "its worktree is made again");
    let work = git(ws.path(), &["show", &format!("corral/{kept}:work.txt")]);
    assert_eq!(work, format!("{kept}\n{kept}\n"), "the second attempt continued the first's branch");
    assert_eq!(ws.status().iter().filter(|v| v["agentId"] == kept.as_str()).count(), 1, "retried, it is shown again");

    // A supervisor killed with orphans about: a worktree with uncommitted changes no agent
    // owns is kept and reported, a clean one is pruned.
    let pid = ws.daemon_pid();
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert!(wait_until(SECS(5), || !alive(pid)));
    let dirty = trees_dir.join("agent-090-W");
    let clean = trees_dir.join("agent-091-W");
    for d in [&dirty, &clean] {
        git(ws.path(), &["worktree", "add", "-q", "--detach", &d.to_string_lossy()]);
    }
    std::fs::write(dirty.join("wip.txt"), "not committed").unwrap();
    ws.ok(&["status"]);
    assert!(wait_until(SECS(10), || !clean.exists()), "the clean orphan is pruned");
    let events = || ws.ok(&["events"]);
    assert!(
        wait_until(SECS(10), || events().lines().any(|l| l.contains("worktree_kept") && l.contains("agent-090-W"))),
        "{}",
        events()
    );
    assert!(events().lines().any(|l| l.contains("worktree_pruned") && l.contains("agent-091-W")), "{}", events());
    assert_eq!(std::fs::read_to_string(dirty.join("wip.txt")).unwrap(), "not committed", "the dirty one is kept");
    assert!(trees_dir.join(&kept).is_dir(), "an agent's own worktree is kept");
    assert_eq!(git(ws.path(), &["status", "--porcelain"]), "", "the workspace's own tree is untouched");
}

#[test]
fn clean_hides_finished_agents_and_with_worktrees_keeps_a_dirty_tree_and_an_unmerged_branch() {
    let ws = repo(WT);
    let unmerged = ws.spawn("W", &["sh", "-c", &format!("echo a > a.txt && {}", commit("a"))]);
    let dirty = ws.spawn("W", &["sh", "-c", "echo wip > wip.txt"]);
    let idle = ws.spawn("W", &["true"]);
    let merged = ws.spawn("W", &["sh", "-c", &format!("echo m > m.txt && {}", commit("m"))]);
    let plain = ws.ok(&["spawn", "--role", "W", "--no-worktree", "--task", "t", "--", "true"]).trim().to_string();
    let done = [&unmerged, &dirty, &idle, &merged, &plain];
    for id in done {
        ws.wait_state(id, &["complete"], SECS(30));
    }
    let running = ws.spawn("W", &["sleep", "30"]);
    ws.wait_state(&running, &["running"], SECS(30));
    git(ws.path(), &["merge", "-q", "--no-edit", &format!("corral/{merged}")]);

    // Nothing is old enough yet.
    let none = ws.json(&["clean", "--older-than", "1h", "--json"]);
    assert_eq!(none["cleaned"], serde_json::json!([]), "{none}");
    assert_eq!(ws.status().len(), 6);

    let r = ws.json(&["clean", "--worktrees", "--json"]);
    let mut cleaned: Vec<String> =
        r["cleaned"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    cleaned.sort();
    let mut want: Vec<String> = done.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(cleaned, want, "the finished agents, not the running one: {r}");
    let views = ws.status();
    assert_eq!(views.len(), 1, "status shows only what was not cleaned: {views:?}");
    assert_eq!(views[0]["agentId"], running.as_str());
    // History stays: show, status ID and events still find a cleaned agent.
    assert_eq!(ws.show(&idle)["status"], "complete");
    assert_eq!(ws.agent(&idle)["status"], "complete");
    let events = ws.ok(&["events"]);
    assert!(events.lines().any(|l| l.contains("\"cleaned\"") && l.contains(idle.as_str())), "{events}");

    let wt = |id: &str| ws.data.join("worktrees").join(id);
    let branch = |id: &str| {
        Command::new("git")
            .arg("-C")
            .arg(ws.path())
            .args(["rev-parse", "--verify", "--quiet", &format!("refs/heads/corral/{id}")])
            .status()
            .unwrap()
            .success()
    };
    assert!(wt(&dirty).exists() && branch(&dirty), "the dirty worktree is kept");
    assert!(!wt(&unmerged).exists() && branch(&unmerged), "the unmerged branch is kept, its tree removed");
    assert!(!wt(&idle).exists() && !branch(&idle), "nothing to keep: both removed");
    assert!(!wt(&merged).exists() && !branch(&merged), "a merged branch is removed");
    let kept: Vec<(String, String)> = r["kept"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["agent"].as_str().unwrap().to_string(), k["what"].as_str().unwrap().to_string()))
        .collect();
    assert!(
        kept.contains(&(dirty.clone(), "worktree".into())) && kept.contains(&(unmerged.clone(), "branch".into())),
        "{r}"
    );
    assert_eq!(kept.len(), 2, "{r}");
    let wl = git(ws.path(), &["worktree", "list", "--porcelain"]);
    assert!(!wl.contains(&idle), "git forgets removed worktrees: {wl}");

    // --force removes the rest; agents cleaned before are not cleaned again.
    let f = ws.json(&["clean", "--worktrees", "--force", "--json"]);
    assert_eq!(f["cleaned"], serde_json::json!([]), "{f}");
    assert_eq!(f["kept"], serde_json::json!([]), "{f}");
    assert!(!wt(&dirty).exists() && !branch(&dirty) && !branch(&unmerged), "{f}");
    assert_eq!(git(ws.path(), &["status", "--porcelain"]), "", "the workspace's own tree is untouched");
    ws.ok(&["kill", &running]);
}

/// A directory holding a `git` that takes `secs` seconds over `ls-tree` (marking, by its
/// pid, when each such call starts and ends in `marks`) and is the real git otherwise.
fn slow_ls_tree_git(secs: u32) -> (tempfile::TempDir, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let real = String::from_utf8(Command::new("sh").args(["-c", "command -v git"]).output().unwrap().stdout).unwrap();
    let dir = tempfile::Builder::new().prefix("corral-slowgit").tempdir().unwrap();
    let marks = dir.path().join("marks");
    std::fs::create_dir(&marks).unwrap();
    let m = marks.display();
    let script = format!(
        "#!/bin/sh\ncase \" $* \" in *\" ls-tree \"*)\n  touch {m}/started.$$; sleep {secs}; {real} \"$@\"; rc=$?; \
         touch {m}/ended.$$; exit $rc;;\nesac\nexec {real} \"$@\"\n",
        real = real.trim()
    );
    let git = dir.path().join("bin");
    std::fs::create_dir(&git).unwrap();
    std::fs::write(git.join("git"), script).unwrap();
    std::fs::set_permissions(git.join("git"), std::fs::Permissions::from_mode(0o755)).unwrap();
    (dir, marks)
}

/// The pids of the slow git's calls that have started (or ended).
fn marked(marks: &Path, what: &str) -> Vec<String> {
    std::fs::read_dir(marks)
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_string_lossy().strip_prefix(&format!("{what}.")).map(str::to_string))
        .collect()
}

#[test]
fn a_slow_branch_check_runs_off_the_loop_status_answers_meanwhile_and_a_restart_checks_again() {
    let ws = repo(WT);
    let (slow, marks) = slow_ls_tree_git(3);
    // The supervisor runs with the slow git first on its PATH.
    let with_slow_git = |args: &[&str]| {
        let mut c = ws.cmd(args);
        let path = format!(
            "{}:{}:{}",
            slow.path().join("bin").display(),
            bin().parent().unwrap().display(),
            std::env::var("PATH").unwrap()
        );
        c.env("PATH", path);
        let o = c.output().unwrap();
        assert!(o.status.success(), "corral {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    };
    with_slow_git(&["status"]);
    let id = ws.spawn(
        "W",
        &["sh", "-c", &format!("echo a > out.txt && {} && corral handoff --deliverable out.txt", commit("out"))],
    );
    assert!(wait_until(SECS(30), || !marked(&marks, "started").is_empty()), "the branch check never started");
    let first = marked(&marks, "started")[0].clone();
    // The check is running: the supervisor answers, and the agent is as it was.
    let views = ws.status();
    assert!(marked(&marks, "ended").is_empty(), "status was answered only after the slow git ended");
    let v = views.iter().find(|v| v["agentId"] == id.as_str()).unwrap();
    assert_eq!(v["status"], "running", "{v}");
    assert_eq!(ws.agent(&id)["status"], "running");
    assert!(marked(&marks, "ended").is_empty());

    // Killed meanwhile: the next supervisor checks again, and the agent completes.
    let pid = ws.daemon_pid();
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert!(wait_until(SECS(5), || !alive(pid)));
    with_slow_git(&["status"]);
    assert!(
        wait_until(SECS(30), || marked(&marks, "started").iter().any(|p| *p != first)),
        "the restarted supervisor never checked the branch again"
    );
    let a = ws.wait_state(&id, &["complete", "failed", "escalated"], SECS(30));
    assert_eq!(a["status"], "complete", "{a}");
    assert_eq!(ws.show(&id)["attempts"].as_array().unwrap().len(), 1, "one attempt, checked twice");
}

#[test]
fn merge_kills_a_hanging_verify_at_the_roles_timeout_and_stays_at_the_last_good_merge() {
    let flags = tempfile::Builder::new().prefix("corral-hang").tempdir().unwrap();
    let (hang, pidfile) = (flags.path().join("hang"), flags.path().join("pid"));
    // Passes in the agents' own worktrees; once `hang` exists, hangs where two.txt is.
    let verify = format!(
        "if [ -f {h} ] && [ -f two.txt ]; then echo hanging; echo $$ > {p}; exec sleep 600; fi",
        h = hang.display(),
        p = pidfile.display()
    );
    let cfg = format!("{WT}verify = [\"sh\", \"-c\", {verify:?}]\nverify_timeout = \"1s\"\n");
    let ws = repo(&cfg);
    let mut ids = Vec::new();
    for name in ["one", "two", "three"] {
        let id = ws.spawn("W", &["sh", "-c", &format!("echo {name} > {name}.txt && {}", commit(name))]);
        ws.wait_state(&id, &["complete"], SECS(30));
        ids.push(id);
    }
    std::fs::write(&hang, "").unwrap();
    let o = ws.run(&["merge", "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["merged"], serde_json::json!([ids[0]]), "{r:#}");
    assert_eq!(r["stopped"]["agent"], ids[1].as_str(), "{r:#}");
    assert_eq!(r["stopped"]["why"], "verify");
    let output = r["stopped"]["output"].as_str().unwrap();
    assert!(output.contains("verify timed out after 1s") && output.contains("hanging"), "{output}");
    assert_eq!(r["notAttempted"], serde_json::json!([ids[2]]));
    let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    assert!(wait_until(SECS(5), || !alive(pid)), "the hanging verify's process group is killed");
    let into = r["into"].as_str().unwrap();
    assert_eq!(
        git(ws.path(), &["rev-parse", &format!("{into}^2")]),
        git(ws.path(), &["rev-parse", &format!("corral/{}", ids[0])]),
        "the branch stays at the last good merge"
    );
    let esc = ws.json(&["escalations", "--json"]);
    let esc = esc.as_array().unwrap();
    assert_eq!(esc.len(), 1, "{esc:?}");
    assert_eq!(esc[0]["agentId"], ids[1].as_str());
    assert!(esc[0]["reason"].as_str().unwrap().contains("verify timed out after 1s"), "{esc:?}");
}

#[test]
fn what_worktree_setup_leaves_untracked_does_not_keep_a_worktree_an_agents_own_change_does() {
    // node_modules is not ignored: only the record of what the setup left excuses it.
    let cfg = format!(
        "{WT}worktree_copy = [\"local.env\"]\n\
         worktree_setup = [\"sh\", \"-c\", \"mkdir -p node_modules/x build && echo m > node_modules/x/index.js && echo o > build/out\"]\n"
    );
    let ws = repo(&cfg);
    std::fs::write(ws.path().join("local.env"), "SECRET=1\n").unwrap();
    let ids: String = GIT_ID.iter().map(|(k, v)| format!("{k}={v} ")).collect();
    let own = format!("echo w > work.txt && git add work.txt && {ids} git commit -qm work");
    let committed = ws.spawn("W", &["sh", "-c", &own]);
    let edited = ws.spawn("W", &["sh", "-c", &format!("{own} && echo more >> shared.txt")]);
    let added = ws.spawn("W", &["sh", "-c", &format!("{own} && echo new > notes.txt")]);
    let in_setup_dir = ws.spawn("W", &["sh", "-c", &format!("{own} && echo new > build/mine")]);
    for id in [&committed, &edited, &added, &in_setup_dir] {
        ws.wait_state(id, &["complete"], SECS(30));
    }
    let wt = |id: &str| ws.data.join("worktrees").join(id);
    assert!(wt(&committed).join("node_modules/x/index.js").is_file() && wt(&committed).join("local.env").is_file());
    let r = ws.json(&["clean", "--worktrees", "--json"]);
    assert!(!wt(&committed).exists(), "setup's and worktree_copy's untracked output keeps nothing: {r}");
    assert!(wt(&edited).exists(), "an uncommitted edit of a tracked file keeps the worktree: {r}");
    assert!(wt(&added).exists(), "an untracked file of the agent's keeps the worktree: {r}");
    assert!(wt(&in_setup_dir).exists(), "a file of the agent's in a directory the setup made keeps it: {r}");
    let mut kept: Vec<&str> = r["kept"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["what"] == "worktree")
        .map(|k| k["agent"].as_str().unwrap())
        .collect();
    kept.sort();
    let mut want = vec![edited.as_str(), added.as_str(), in_setup_dir.as_str()];
    want.sort();
    assert_eq!(kept, want, "{r}");
    let removed = r["removedWorktrees"].as_array().unwrap();
    assert_eq!(removed.len(), 1, "{r}");
    assert!(removed[0].as_str().unwrap().ends_with(committed.as_str()), "{r}");
}

/// Sets a path's modification time an hour back.
fn age(p: &Path) {
    let ok = Command::new("touch").args(["-h", "-d", "1 hour ago"]).arg(p).status().unwrap().success();
    assert!(ok, "touch {}", p.display());
}

#[test]
fn a_killed_gits_leftovers_older_than_the_supervisor_are_cleared_and_the_worktree_made() {
    let ws = repo(WT);
    ws.ok(&["status"]);
    let dot_git = ws.path().join(".git");
    // A worktree record half-written by a git killed with its supervisor: its directory is
    // there, its commondir empty. Every `git worktree add` dies on it.
    let stray = tempfile::Builder::new().prefix("corral-stray").tempdir().unwrap();
    let admin = dot_git.join("worktrees/half");
    std::fs::create_dir_all(&admin).unwrap();
    std::fs::write(admin.join("gitdir"), format!("{}/.git\n", stray.path().display())).unwrap();
    std::fs::write(admin.join("commondir"), "").unwrap();
    std::fs::write(stray.path().join(".git"), format!("gitdir: {}\n", admin.display())).unwrap();
    // And the lock of the branch it was making for the agent to be made now.
    let lock = dot_git.join("refs/heads/corral/agent-001-W.lock");
    std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
    std::fs::write(&lock, "").unwrap();
    for p in [&admin.join("gitdir"), &admin.join("commondir"), &lock, &admin] {
        age(p);
    }
    let by_hand = Command::new("git")
        .arg("-C")
        .arg(ws.path())
        .args(["worktree", "add", "-q", "--detach"])
        .arg(stray.path().join("x"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&by_hand.stderr).contains("commondir"), "git itself trips over it");

    let id = ws.spawn("W", &["sh", "-c", &format!("echo x > x.txt && {}", commit("x"))]);
    assert_eq!(id, "agent-001-W");
    let a = ws.wait_state(&id, &["complete", "failed", "escalated"], SECS(30));
    assert_eq!(a["status"], "complete", "{a}");
    assert_eq!(ws.show(&id)["attempts"].as_array().unwrap().len(), 1, "no attempt lost to the leftovers");
    assert!(!lock.exists() && !admin.exists(), "the leftovers are gone");
    assert_eq!(git(ws.path(), &["show", &format!("corral/{id}:x.txt")]), "x\n");

    // A lock newer than the supervisor may be a git at work: it is left alone, and the
    // attempt fails without starting, named; once it is gone, a retry makes the worktree.
    let fresh = dot_git.join("refs/heads/corral/agent-002-W.lock");
    std::fs::write(&fresh, "").unwrap();
    let id = ws.spawn("W", &["sh", "-c", &format!("echo w > w.txt && {}", commit("w"))]);
    assert_eq!(id, "agent-002-W");
    let a = ws.wait_state(&id, &["failed", "escalated", "complete"], SECS(30));
    assert_ne!(a["status"], "complete", "{a}");
    assert!(fresh.exists(), "a fresh lock is never removed");
    assert!(a["reason"].as_str().unwrap().contains("agent-002-W.lock"), "the reason names the lock: {a}");
    std::fs::remove_file(&fresh).unwrap();
    ws.ok(&["retry", &id]);
    let a = ws.wait_state(&id, &["complete", "failed", "escalated"], SECS(30));
    assert_eq!(a["status"], "complete", "{a}");
    assert_eq!(git(ws.path(), &["show", &format!("corral/{id}:w.txt")]), "w\n");
}

#[test]
fn port_base_and_ports_stay_disjoint_across_a_supervisor_restart() {
    let cfg = "[health]\nmax_concurrent = 50\nbreaker_failures = 0\n[defaults]\nmax_retries = 0\n\
               [roles.P]\nports_per_agent = 3\nport_base = 23457\n";
    let ws = Ws::with_config(Some(cfg));
    let script = ["sh", "-c", "echo PORT=$CORRAL_PORT; sleep 60"];
    let mut ids: Vec<String> = (0..3).map(|_| ws.spawn("P", &script)).collect();
    for id in &ids {
        ws.wait_state(id, &["running"], SECS(20));
    }
    let pid = ws.daemon_pid();
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert!(wait_until(SECS(5), || !alive(pid)));
    ws.ok(&["status"]);
    ids.extend((0..3).map(|_| ws.spawn("P", &script)));
    let port = |id: &str| -> u32 {
        let mut p = None;
        assert!(
            wait_until(SECS(20), || {
                p = log_of(&ws, id).lines().find_map(|l| l.strip_prefix("PORT=")?.parse().ok());
                p.is_some()
            }),
            "{id} printed no port"
        );
        p.unwrap()
    };
    let mut ports: Vec<u32> = ids.iter().map(|id| port(id)).collect();
    for id in &ids[..3] {
        assert_eq!(ws.agent(id)["status"], "running", "the first three live on through the restart");
    }
    ports.sort();
    assert!(ports[0] >= 23457, "from port_base up: {ports:?}");
    assert!(ports.windows(2).all(|w| w[1] >= w[0] + 3), "three ports each, never shared: {ports:?}");
    for id in &ids {
        ws.ok(&["kill", id]);
    }
}
