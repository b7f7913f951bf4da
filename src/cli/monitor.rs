//! `corral monitor`: the live dashboard. It follows the supervisor's event stream and asks
//! only for the agents an event touched (plus a periodic full refresh for ages), so its
//! cost does not grow with the number of status files. A supervisor that goes away
//! (killed, restarted) is connected to again, and the stream resumes where it was.
//!
//! The detail and log panes are filled by a thread of their own ([`panes`]), so a slow
//! `show` or log read never holds a frame back: it asks about the selected agent alone,
//! when the selection or that agent changed, and reads its log only when the log's size or
//! modification time did.

use super::{Ctx, Result};
use crate::ipc::{AgentView, HealthView, Request, ShowView};
use crate::monitor::{Command, Key, Model};
use crate::protocol::{AgentId, DataDir, fsio};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind};
use std::collections::BTreeSet;
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Redraws per second.
    #[arg(long, default_value_t = 8)]
    pub fps: u32,
    /// Write frame and CPU figures to this file on exit (for benchmarks).
    #[arg(long, hide = true)]
    pub stats: Option<std::path::PathBuf>,
    /// Quit after this many seconds (for benchmarks).
    #[arg(long, hide = true)]
    pub seconds: Option<f64>,
    /// Print one plain-text snapshot (counts, health, the agents, open escalations) and
    /// exit. Without it, output that is not a terminal gets a new snapshot each time
    /// something changed, until interrupted.
    #[arg(long)]
    pub once: bool,
}

impl Args {
    /// Plain text rather than the dashboard: asked for, or stdout is not a terminal.
    pub fn text(&self) -> bool {
        use std::io::IsTerminal;
        self.once || !std::io::stdout().is_terminal()
    }
}

/// A plain-text snapshot of what the dashboard shows: a summary line (agents by state,
/// capacity, breaker, escalations), `extra` lines, the agents as `corral status` prints
/// them, and the open escalations as `corral escalations` prints them.
pub fn text_frame(m: &Model, extra: &[String]) -> String {
    let mut out: Vec<u8> = Vec::new();
    let _ = write_frame(m, extra, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn write_frame(m: &Model, extra: &[String], out: &mut impl std::io::Write) -> std::io::Result<()> {
    use crate::say_to;
    let counts: Vec<String> = m.counts().iter().map(|(s, n)| format!("{n} {s}")).collect();
    let mut summary = vec![format!(
        "{}{}",
        crate::policy::plural(m.agents.len(), "agent", "agents"),
        if counts.is_empty() { String::new() } else { format!(" ({})", counts.join(", ")) }
    )];
    if let Some(h) = &m.health {
        summary.push(format!("{} of {} running", h.running, h.max_concurrent));
        summary.push(format!("breaker {}", h.breaker.state));
        if h.cost_usd > 0.0 {
            summary.push(format!("cost ${:.2}", h.cost_usd));
        }
        if let Some(why) = &h.held_because {
            summary.push(format!("holding new starts: {why}"));
        }
        summary.extend(crate::monitor::ui::provider_limits(&h.providers));
    }
    let open: Vec<_> = m.escalations.iter().filter(|e| e.is_open()).cloned().collect();
    summary.push(crate::policy::plural(open.len(), "open escalation", "open escalations"));
    say_to!(out, "{}", summary.join("; "))?;
    for l in extra {
        say_to!(out, "{l}")?;
    }
    let views: Vec<AgentView> = m.visible().into_iter().cloned().collect();
    if !views.is_empty() {
        super::status::table(&views, super::status::columns(), out)?;
    }
    if !open.is_empty() {
        say_to!(out, "escalations:")?;
        super::escalations::lines(&open, out)?;
    }
    Ok(())
}

/// What decides whether a text snapshot is new: everything but the ages.
pub fn fingerprint(m: &Model, extra: &[String]) -> String {
    let views: Vec<serde_json::Value> = m
        .visible()
        .into_iter()
        .map(|v| {
            let mut j = serde_json::to_value(v).unwrap_or_default();
            if let Some(o) = j.as_object_mut() {
                o.remove("ageSeconds");
                o.remove("nextAttemptInSeconds");
            }
            j
        })
        .collect();
    let mut h = m.health.as_ref().map(|h| serde_json::to_value(h).unwrap_or_default()).unwrap_or_default();
    if let Some(o) = h.as_object_mut() {
        for k in ["freeMemory", "load"] {
            o.remove(k);
        }
        if let Some(b) = o.get_mut("breaker").and_then(|b| b.as_object_mut()) {
            b.remove("probeInSeconds");
        }
    }
    serde_json::json!([views, h, m.escalations, extra]).to_string()
}

enum Change {
    Agent(String),
    Global,
    /// What happens to the connection, for the message line.
    Note(String),
}

/// The monitor's connection for requests: made again when the supervisor went away.
struct Conn {
    data: DataDir,
    root: std::path::PathBuf,
    client: Option<crate::client::Client>,
}

impl Conn {
    fn call(&mut self, req: &Request) -> anyhow::Result<crate::ipc::Reply> {
        if let Some(c) = self.client.as_mut() {
            match c.call(req) {
                Ok(r) => return Ok(r),
                Err(_) => self.client = None,
            }
        }
        let mut c = crate::client::Client::connect(&self.data, &self.root)?;
        let r = c.call(req)?;
        self.client = Some(c);
        Ok(r)
    }
}

const FULL_REFRESH: Duration = Duration::from_secs(2);
/// A terminal at least this tall shows the detail pane from the start.
pub const DETAIL_ROWS: u16 = 40;

pub fn run(ctx: &Ctx, a: Args) -> Result {
    let mut client = Conn { data: ctx.data.clone(), root: ctx.ws.root.clone(), client: Some(ctx.client()?) };
    if a.once {
        let mut m = Model::default();
        refresh_all(&mut client, &mut m)?;
        crate::display::raw_out(text_frame(&m, &[]).as_bytes())?;
        return Ok(0);
    }
    let after: u64 = serde_json::from_value(super::into_result(client.call(&Request::LastSeq)?)?)?;
    let (tx, rx) = mpsc::channel();
    // Its own thread, left behind when the dashboard quits.
    let (data, root) = (ctx.data.clone(), ctx.ws.root.clone());
    std::thread::spawn(move || follow(crate::ops::Target { data: &data, root: &root }, after, tx));
    if a.text() {
        return text_loop(&mut client, &rx, &a);
    }
    show(&mut client, &rx, &a)
}

/// Output that is not a terminal: a snapshot now, and another each time something changed.
fn text_loop(client: &mut Conn, rx: &mpsc::Receiver<Change>, a: &Args) -> Result {
    let start = Instant::now();
    let mut m = Model::default();
    let mut last = String::new();
    loop {
        match refresh_all(client, &mut m) {
            Ok(()) => {
                let f = fingerprint(&m, &[]);
                if f != last {
                    last = f;
                    if crate::display::raw_out(format!("{}\n", text_frame(&m, &[])).as_bytes()).is_err() {
                        return Ok(0); // the reader went away
                    }
                }
            }
            Err(e) => crate::note!("corral monitor: cannot reach the supervisor ({}); trying again", e.msg)?,
        }
        if a.seconds.is_some_and(|s| start.elapsed().as_secs_f64() >= s) {
            return Ok(0);
        }
        match rx.recv_timeout(FULL_REFRESH) {
            Ok(Change::Note(n)) if !n.is_empty() => crate::note!("corral monitor: {n}")?,
            Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(0),
        }
        while rx.try_recv().is_ok() {}
    }
}

/// Turns the event stream (followed across restarts) into what the dashboard must refresh.
fn follow(target: crate::ops::Target, after: u64, tx: mpsc::Sender<Change>) {
    let ntx = tx.clone();
    let note = move |m: &str| {
        let _ = ntx.send(Change::Note(m.to_string()));
    };
    let mut events = crate::ops::follow::Follower::new(target, after, None, &note);
    let mut seen = 0;
    loop {
        let e = match events.next(Some(Duration::from_secs(1))) {
            Ok(Some(e)) => e,
            Ok(None) => {
                if events.reconnects() != seen {
                    seen = events.reconnects();
                    if tx.send(Change::Global).is_err() {
                        return;
                    }
                }
                continue;
            }
            Err(e) => {
                let _ = tx.send(Change::Note(e.msg));
                return;
            }
        };
        let global = e.kind.starts_with("escalation") || e.kind.starts_with("breaker") || e.kind == "escalated"
            // A cleaned agent leaves the view: only a full snapshot drops it.
            || e.kind == "cleaned";
        let change = match e.agent_id {
            Some(id) if !global => Change::Agent(id.to_string()),
            Some(id) => {
                let _ = tx.send(Change::Agent(id.to_string()));
                Change::Global
            }
            None => Change::Global,
        };
        if tx.send(change).is_err() {
            return;
        }
    }
}

/// What the pane thread should look at: the selected agent, and which panes are shown.
#[derive(Debug, Clone, Default, PartialEq)]
struct Focus {
    id: Option<String>,
    detail: bool,
    log: bool,
}

enum Ask {
    Focus(Focus),
    /// The focused agent changed (an event about it): its detail is asked for again.
    Changed,
}

enum News {
    Detail(String, Box<std::result::Result<ShowView, String>>),
    /// The last lines of an agent's log, escaped.
    Log(String, Vec<String>),
}

/// How often the pane thread looks at the focused agent's log.
const LOG_POLL: Duration = Duration::from_millis(250);
/// How much of the end of a log is read, and how many of its lines are kept.
const LOG_TAIL_BYTES: u64 = 64 * 1024;
const LOG_LINES: usize = 200;

type Seen = (String, Option<(u64, std::time::SystemTime)>);

/// The pane thread: answers the latest focus only (older asks are dropped unanswered).
fn panes(mut conn: Conn, asks: mpsc::Receiver<Ask>, news: mpsc::Sender<News>) {
    let mut focus = Focus::default();
    let mut want_detail = false;
    // The log as last read: whose, and its size and modification time (none: no log yet).
    let mut seen: Option<Seen> = None;
    loop {
        let first = match asks.recv_timeout(LOG_POLL) {
            Ok(a) => Some(a),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        for a in first.into_iter().chain(std::iter::from_fn(|| asks.try_recv().ok())) {
            match a {
                Ask::Focus(f) => {
                    want_detail = f.detail && (f.id != focus.id || !focus.detail || want_detail);
                    if f.id != focus.id || !f.log {
                        seen = None;
                    }
                    focus = f;
                }
                Ask::Changed => want_detail |= focus.detail,
            }
        }
        let Some(id) = focus.id.clone() else { continue };
        if want_detail {
            want_detail = false;
            let detail = conn
                .call(&Request::Show { id: id.clone() })
                .map_err(|e| e.to_string())
                .and_then(|r| super::into_result(r).map_err(|e| e.msg))
                .and_then(|v| serde_json::from_value::<ShowView>(v).map_err(|e| e.to_string()));
            if news.send(News::Detail(id.clone(), Box::new(detail))).is_err() {
                return;
            }
        }
        if focus.log
            && let Some(lines) = read_log(&conn.data, &id, &mut seen)
            && news.send(News::Log(id, lines)).is_err()
        {
            return;
        }
    }
}

/// The last lines of an agent's log when it changed since `seen` (its size or modification
/// time), else `None`. Read through `fsio`: a log replaced by a symlink or a FIFO is not
/// followed, and only its tail is read. Every line is escaped: an agent's output may hold
/// control sequences, and none may reach the terminal.
fn read_log(data: &DataDir, id: &str, seen: &mut Option<Seen>) -> Option<Vec<String>> {
    let Ok(aid) = AgentId::parse(id) else { return Some(vec!["(not an agent id)".into()]) };
    let path = data.log_file(&aid);
    let stamp = std::fs::symlink_metadata(&path).ok().map(|m| (m.len(), m.modified().unwrap_or(std::time::UNIX_EPOCH)));
    let now = Some((id.to_string(), stamp));
    if *seen == now {
        return None;
    }
    *seen = now;
    if stamp.is_none() {
        return Some(Vec::new());
    }
    let (bytes, skipped) = match fsio::read_tail(data.root(), &path, LOG_TAIL_BYTES) {
        Ok(x) => x,
        Err(e) => return Some(vec![crate::display::escape(&format!("(cannot read the log: {e})")).into_owned()]),
    };
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<&str> = text.lines().collect();
    if skipped > 0 && !lines.is_empty() {
        lines.remove(0); // cut in the middle by the tail's start
    }
    let from = lines.len().saturating_sub(LOG_LINES);
    Some(
        lines[from..]
            .iter()
            .map(|l| crate::display::escape(&l.trim_end_matches('\r').replace('\t', "    ")).into_owned())
            .collect(),
    )
}

fn show(client: &mut Conn, rx: &mpsc::Receiver<Change>, a: &Args) -> Result {
    let mut m = Model::default();
    refresh_all(client, &mut m)?;
    m.select_attention();
    let mut terminal = ratatui::try_init()?;
    // Tall enough: the detail pane is there from the start.
    m.detail_pane = terminal.size().is_ok_and(|s| s.height >= DETAIL_ROWS);
    let result = ui_loop(&mut terminal, client, &mut m, rx, a);
    ratatui::restore();
    if let Some(path) = &a.stats {
        let cpu = cpu_seconds();
        let _ = std::fs::write(path, format!("{{\"frames\": {}, \"cpuSeconds\": {cpu:.3}}}\n", m.redraws));
    }
    result
}

fn ui_loop(
    terminal: &mut ratatui::DefaultTerminal,
    client: &mut Conn,
    m: &mut Model,
    rx: &mpsc::Receiver<Change>,
    a: &Args,
) -> Result {
    let frame = Duration::from_millis(1000 / a.fps.clamp(1, 60) as u64);
    let start = Instant::now();
    let mut last_full = Instant::now();
    let mut table = ratatui::widgets::TableState::default();
    let (ask, asks) = mpsc::channel();
    let (news_tx, news) = mpsc::channel();
    let conn = Conn { data: client.data.clone(), root: client.root.clone(), client: None };
    std::thread::spawn(move || panes(conn, asks, news_tx));
    let mut focus = Focus::default();
    // Frames on a fixed cadence: the work of a frame comes out of its wait, not on top.
    let mut deadline = Instant::now();
    loop {
        deadline += frame;
        if deadline < Instant::now() {
            deadline = Instant::now(); // fell behind (a slow machine): do not try to catch up
        }
        // Keys are handled as they come; everything else waits for the next frame.
        while let Some(key) = next_key(deadline)? {
            match m.key(key) {
                Some(Command::Quit) => return Ok(0),
                Some(cmd) => {
                    m.message = execute(client, cmd);
                    if let Err(e) = refresh_all(client, m) {
                        m.message = format!("cannot reach the supervisor ({}); trying again", e.msg);
                    }
                }
                None => {}
            }
            sync_panes(m, &mut focus, &ask, &news, false);
            terminal.draw(|f| crate::monitor::ui::draw(f, m, &mut table))?;
        }
        let mut changed = BTreeSet::new();
        let mut global = false;
        let focused = focus.id.clone();
        loop {
            match rx.try_recv() {
                Ok(Change::Agent(id)) => {
                    changed.insert(id);
                }
                Ok(Change::Global) => global = true,
                Ok(Change::Note(n)) if !n.is_empty() => m.message = n,
                Ok(Change::Note(_)) => {}
                Err(_) => break,
            }
        }
        let touched = global || focused.is_some_and(|id| changed.contains(&id));
        // A supervisor that cannot be reached for a moment (restarting) is said so, and
        // asked again at the next frame.
        let refreshed = if last_full.elapsed() >= FULL_REFRESH || global {
            refresh_all(client, m).map(|()| last_full = Instant::now())
        } else if !changed.is_empty() {
            client
                .call(&Request::Status { ids: changed.into_iter().collect(), role: None })
                .map_err(super::Fail::from)
                .and_then(super::into_result)
                .and_then(|v| Ok(serde_json::from_value::<Vec<AgentView>>(v)?))
                .map(|views| m.apply(views))
        } else {
            Ok(())
        };
        if let Err(e) = refreshed {
            m.message = format!("cannot reach the supervisor ({}); trying again", e.msg);
        }
        m.clamp_selection();
        sync_panes(m, &mut focus, &ask, &news, touched);
        terminal.draw(|f| crate::monitor::ui::draw(f, m, &mut table))?;
        m.redraws += 1;
        if a.seconds.is_some_and(|s| start.elapsed().as_secs_f64() >= s) {
            return Ok(0);
        }
    }
}

/// Tells the pane thread what is selected and shown (when that changed, or `touched`: the
/// selected agent changed), and takes in what it found.
fn sync_panes(m: &mut Model, focus: &mut Focus, ask: &mpsc::Sender<Ask>, news: &mpsc::Receiver<News>, touched: bool) {
    let now = Focus { id: m.selected_id(), detail: m.detail_pane, log: m.log_pane };
    if now != *focus {
        let _ = ask.send(Ask::Focus(now.clone()));
        *focus = now;
    } else if touched {
        let _ = ask.send(Ask::Changed);
    }
    while let Ok(n) = news.try_recv() {
        match n {
            News::Detail(id, d) => {
                if focus.id.as_deref() == Some(id.as_str()) {
                    m.detail = Some(*d);
                }
            }
            News::Log(id, lines) => m.log = Some((id, lines)),
        }
    }
}

fn refresh_all(client: &mut Conn, m: &mut Model) -> Result<()> {
    let views: Vec<AgentView> =
        serde_json::from_value(super::into_result(client.call(&Request::Status { ids: vec![], role: None })?)?)?;
    m.replace_all(views);
    let h: HealthView = serde_json::from_value(super::into_result(client.call(&Request::Health)?)?)?;
    m.health = Some(h);
    m.escalations = serde_json::from_value(super::into_result(client.call(&Request::Escalations { all: false })?)?)?;
    Ok(())
}

fn execute(client: &mut Conn, cmd: Command) -> String {
    let (req, what) = match cmd {
        Command::Kill(id) => (Request::Kill { id: id.clone(), grace_ms: 5_000 }, format!("kill {id}")),
        Command::Retry(id) => (Request::Retry { id: id.clone(), context: None, env: vec![] }, format!("retry {id}")),
        Command::Tell(id, text) => (Request::Tell { id: id.clone(), text }, format!("told {id}")),
        Command::Resolve(n, note) => (
            Request::Resolve { n, note: if note.is_empty() { None } else { Some(note) }, answer: Default::default() },
            format!("resolved #{n}"),
        ),
        Command::Quit => return String::new(),
    };
    match client.call(&req) {
        Ok(r) if r.ok => what,
        Ok(r) => format!("{what}: {}", r.error.unwrap_or_default()),
        Err(e) => format!("{what}: {e}"),
    }
}

/// CPU time this process has used (user + system), for the benchmark figures.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    // After the command: state(0) ... utime(11) stime(12), in clock ticks.
    let ticks = |i: usize| rest.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz.max(1.0)
}

/// The next key pressed before `deadline`, as the monitor's model takes keys; `None` once
/// the deadline passes. Other events, releases and keys the model has no use for are
/// skipped.
pub(super) fn next_key(deadline: Instant) -> std::io::Result<Option<Key>> {
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if !event::poll(left)? {
            break;
        }
        let Event::Key(k) = event::read()? else { continue };
        if k.kind != KeyEventKind::Press {
            continue;
        }
        let key = match k.code {
            KeyCode::Up => Key::Up,
            KeyCode::Down => Key::Down,
            KeyCode::PageUp => Key::PageUp,
            KeyCode::PageDown => Key::PageDown,
            KeyCode::Home => Key::Home,
            KeyCode::End => Key::End,
            KeyCode::Enter => Key::Enter,
            KeyCode::Esc => Key::Esc,
            KeyCode::Backspace => Key::Backspace,
            KeyCode::Char(c) => Key::Char(c),
            _ => continue,
        };
        return Ok(Some(key));
    }
    Ok(None)
}
