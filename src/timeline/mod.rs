//! A picture of a run (`corral timeline`): one row per agent, its attempts as bars coloured
//! by outcome, the time between them (queueing, backoff, rate-limit waits, waiting on a
//! human) as thin lines carrying their reasons, escalations marked where they happened, on
//! a wall-clock axis, with a legend.
//!
//! Pure: the command gathers the views and the event log; this lays them out ([`layout`])
//! and writes the SVG ([`svg`]) or an HTML page that holds it ([`html`]). Every text an
//! agent controls (its task, reasons, findings quoted in them) goes through [`xml_text`]:
//! escaped for XML, control characters made visible, so it can neither break the markup
//! nor inject script into the page.

use jiff::Timestamp;
use jiff::tz::TimeZone;
use std::fmt::Write as _;

#[cfg(test)]
mod tests;

/// How an attempt ended, which is its bar's colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Complete,
    /// A crash, a deliverable failure, blocked, a budget overrun.
    Failed,
    /// Ran past a timeout, or stalled (silent).
    Timeout,
    /// Stopped by `corral kill` (or by a human retry of a running agent).
    Killed,
    /// Hit a provider's rate or usage limit.
    RateLimited,
    /// Still running: its bar reaches to now.
    Running,
}

impl Outcome {
    pub const ALL: [Outcome; 6] =
        [Outcome::Complete, Outcome::Failed, Outcome::Timeout, Outcome::Killed, Outcome::RateLimited, Outcome::Running];

    /// The class of its bar in the SVG.
    pub fn name(self) -> &'static str {
        match self {
            Self::Complete => "complete",
            Self::Failed => "failed",
            Self::Timeout => "timeout",
            Self::Killed => "killed",
            Self::RateLimited => "rate-limited",
            Self::Running => "running",
        }
    }

    /// The legend's words for it.
    pub fn label(self) -> &'static str {
        match self {
            Self::Complete => "complete",
            Self::Failed => "crash / failed",
            Self::Timeout => "timeout / stalled",
            Self::Killed => "killed",
            Self::RateLimited => "rate limited",
            Self::Running => "running",
        }
    }

    pub fn colour(self) -> &'static str {
        match self {
            Self::Complete => "#2ca02c",
            Self::Failed => "#d62728",
            Self::Timeout => "#ff7f0e",
            Self::Killed => "#7f7f7f",
            Self::RateLimited => "#9467bd",
            Self::Running => "#1f77b4",
        }
    }

    /// From what `show --json` says of an attempt: its `failureType` and `action`, whether it
    /// ended, and whether it is the last attempt of an agent that was killed.
    pub fn of(failure_type: Option<&str>, ended: bool, action: Option<&str>, killed_last: bool) -> Self {
        if !ended {
            return Self::Running;
        }
        match failure_type {
            Some("timeout" | "silent") => Self::Timeout,
            Some("rate_limited") => Self::RateLimited,
            Some(_) => Self::Failed,
            None if killed_last || action == Some("retry") => Self::Killed,
            None => Self::Complete,
        }
    }
}

/// What an agent was doing between attempts: a thin line in its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapKind {
    /// Waiting to start: dependencies, capacity, the breaker, a provider's limit.
    Queued,
    /// Waiting out the backoff before a retry.
    Backoff,
    /// Waiting for a rate limit's reset.
    Wait,
    /// Escalated or blocked: waiting on a human.
    Human,
}

impl GapKind {
    pub const ALL: [GapKind; 4] = [GapKind::Queued, GapKind::Backoff, GapKind::Wait, GapKind::Human];

    pub fn name(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Backoff => "backoff",
            Self::Wait => "wait",
            Self::Human => "human",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Backoff => "backoff before a retry",
            Self::Wait => "waiting for a rate limit",
            Self::Human => "waiting on a human",
        }
    }

    pub fn colour(self) -> &'static str {
        match self {
            Self::Queued => "#b0b0b0",
            Self::Backoff => "#555555",
            Self::Wait => "#9467bd",
            Self::Human => "#d62728",
        }
    }

    fn dash(self) -> &'static str {
        match self {
            Self::Queued => "",
            Self::Backoff => " stroke-dasharray=\"4 3\"",
            Self::Wait => " stroke-dasharray=\"1 2\"",
            Self::Human => " stroke-dasharray=\"6 2 1 2\"",
        }
    }
}

/// A moment marked in a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkKind {
    /// An escalation was opened for the agent.
    Escalation,
    /// A human resolved one.
    Resolved,
}

impl MarkKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Escalation => "escalation",
            Self::Resolved => "resolved",
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            Self::Escalation => "escalation opened",
            Self::Resolved => "escalation resolved",
        }
    }
    pub const COLOUR: &'static str = "#ffbf00";
}

/// One attempt, as `show --json` gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub n: u32,
    pub start: Timestamp,
    pub end: Option<Timestamp>,
    pub outcome: Outcome,
    pub reason: Option<String>,
}

/// One event of the agent's (only those the picture uses are kept).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub at: Timestamp,
    pub kind: String,
    /// The event's `reason` (or `note`, or the blocker it waits on).
    pub reason: Option<String>,
    /// The escalation's number, for `escalation_opened` and `escalation_resolved`.
    pub escalation: Option<u64>,
    /// A `waiting` event about a running agent's blocker (not a state of its own).
    pub blocker: bool,
}

/// Everything the picture shows of one agent.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentRun {
    pub id: String,
    pub role: String,
    pub task: String,
    pub status: String,
    pub spawned: Timestamp,
    /// Not finished: what it is doing now reaches to now.
    pub open: bool,
    pub attempts: Vec<Attempt>,
    /// In the order they happened.
    pub events: Vec<Event>,
}

/// The event kinds [`layout`] reads; the command keeps only these.
pub const EVENT_KINDS: &[&str] = &[
    "queued",
    "retrying",
    "waiting",
    "needs_human",
    "escalated",
    "retry_requested",
    "resumed",
    "started",
    "complete",
    "failed",
    "timed_out",
    "killed",
    "escalation_opened",
    "escalation_resolved",
];

pub struct Options {
    /// Width of the picture in pixels; the run's time is scaled to it.
    pub width: u32,
    /// The wall clock the axis is in.
    pub tz: TimeZone,
    /// Where open bars and lines end.
    pub now: Timestamp,
}

/// The picture, laid out: positions in pixels, texts raw (escaped when written).
#[derive(Debug, Clone)]
pub struct Layout {
    pub width: f64,
    pub height: f64,
    pub title: String,
    pub t0: Timestamp,
    pub t1: Timestamp,
    /// Where the time axis begins and ends.
    pub plot_x0: f64,
    pub plot_x1: f64,
    /// The top and bottom of the rows.
    pub rows_y0: f64,
    pub rows_y1: f64,
    pub label_width: f64,
    pub legend: Vec<LegendItem>,
    pub ticks: Vec<Tick>,
    pub rows: Vec<RowLayout>,
}

#[derive(Debug, Clone)]
pub struct LegendItem {
    pub x: f64,
    pub y: f64,
    pub swatch: Swatch,
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Swatch {
    Bar(Outcome),
    Line(GapKind),
    Mark(MarkKind),
}

#[derive(Debug, Clone)]
pub struct Tick {
    pub x: f64,
    pub label: String,
}

#[derive(Debug, Clone)]
pub struct RowLayout {
    pub id: String,
    /// The row's top; bars and lines sit on `y + ROW_HEIGHT / 2`.
    pub y: f64,
    /// The label: the id (shortened only if it alone would not fit) and the task, shortened
    /// to what is left of the label column; `full` is the tooltip.
    pub label_id: String,
    pub label_task: String,
    pub full: String,
    pub bars: Vec<BarLayout>,
    pub gaps: Vec<GapLayout>,
    pub marks: Vec<MarkLayout>,
}

#[derive(Debug, Clone)]
pub struct BarLayout {
    pub attempt: u32,
    pub outcome: Outcome,
    pub x: f64,
    pub w: f64,
    pub title: String,
}

#[derive(Debug, Clone)]
pub struct GapLayout {
    pub kind: GapKind,
    pub x: f64,
    pub w: f64,
    pub title: String,
    /// The reason written on the line, where some of it fits.
    pub text: Option<String>,
}

#[derive(Debug, Clone)]
pub struct MarkLayout {
    pub kind: MarkKind,
    pub x: f64,
    pub title: String,
}

pub const ROW_HEIGHT: f64 = 24.0;
pub const BAR_HEIGHT: f64 = 14.0;
/// Bars are at least this wide, so that a one-second attempt in a day-long run still shows.
pub const MIN_BAR: f64 = 2.0;
const FONT: &str = "DejaVu Sans Mono, Menlo, Consolas, monospace";
/// Width of one character of the monospace font, per pixel of font size.
const CHAR_EM: f64 = 0.61;
const LABEL_FONT: f64 = 11.0;
const GAP_FONT: f64 = 9.0;
const AXIS_FONT: f64 = 10.0;
/// Room left between two tick labels.
const TICK_GAP: f64 = 30.0;
const TICK_STEPS_MS: &[i64] = &[
    100,
    200,
    500,
    1_000,
    2_000,
    5_000,
    10_000,
    15_000,
    30_000,
    60_000,
    120_000,
    300_000,
    600_000,
    900_000,
    1_800_000,
    3_600_000,
    7_200_000,
    10_800_000,
    21_600_000,
    43_200_000,
    86_400_000,
    172_800_000,
    604_800_000,
];

/// How a tick at this step is labelled.
fn tick_format(step: i64) -> &'static str {
    if step < 1_000 {
        "%H:%M:%S%.1f"
    } else if step < 60_000 {
        "%H:%M:%S"
    } else {
        "%H:%M"
    }
}

/// The least distance between ticks at this step: their labels' width and a gap.
pub fn tick_room(step: i64) -> f64 {
    let chars = match tick_format(step) {
        "%H:%M:%S%.1f" => 10.0,
        "%H:%M:%S" => 8.0,
        _ => 6.0, // `%H:%M`, or `%b %d` where the date changes
    };
    chars * AXIS_FONT * CHAR_EM + TICK_GAP
}

fn chars_fitting(px: f64, font: f64) -> usize {
    (px / (font * CHAR_EM)).floor().max(0.0) as usize
}

/// At most `max` characters of `s` as it will be shown (controls made visible), the last
/// one `…` when some were cut.
pub fn shorten(s: &str, max: usize) -> String {
    let e = crate::display::escape(s);
    if e.chars().count() <= max {
        return e.into_owned();
    }
    if max == 0 {
        return String::new();
    }
    e.chars().take(max - 1).chain(['…']).collect()
}

/// Text for XML character data and attribute values: `&<>"'` as entities, every control
/// character (and the bidi controls) as a visible escape (`\n`, `\e`, `\u{202e}`), and the
/// two characters XML forbids outright as U+FFFD.
pub fn xml_text(s: &str) -> String {
    let e = crate::display::escape(s);
    let mut out = String::with_capacity(e.len() + 8);
    for c in e.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\u{fffe}' | '\u{ffff}' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// `850ms`, `12.3s`, `4m05s`, `2h03m`.
pub fn duration(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1_000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{}m{:02}s", ms / 60_000, ms % 60_000 / 1000)
    } else {
        format!("{}h{:02}m", ms / 3_600_000, ms % 3_600_000 / 60_000)
    }
}

fn ms_between(a: Timestamp, b: Timestamp) -> i64 {
    b.as_millisecond() - a.as_millisecond()
}

fn clock(t: Timestamp, tz: &TimeZone, fmt: &str) -> String {
    t.to_zoned_datetime(tz.clone()).strftime(fmt).to_string()
}

/// The stretches between attempts, from the agent's state events: each begins where a
/// waiting state is entered and lasts until the next state (an attempt's start, the next
/// wait, the end). One still open lasts until `t1`: while the agent is unfinished, or when
/// it waits on a human.
fn gaps(run: &AgentRun, t1: Timestamp) -> Vec<(GapKind, Timestamp, Timestamp, String)> {
    let mut out = Vec::new();
    let mut cur: Option<(GapKind, Timestamp, String)> = None;
    for e in &run.events {
        let opens = match e.kind.as_str() {
            "queued" => Some((GapKind::Queued, e.reason.clone().unwrap_or_else(|| "queued".into()))),
            "retrying" => Some((GapKind::Backoff, e.reason.clone().unwrap_or_else(|| "backoff".into()))),
            "waiting" if e.blocker => continue,
            "waiting" => Some((GapKind::Wait, e.reason.clone().unwrap_or_else(|| "waiting".into()))),
            "needs_human" | "escalated" => {
                Some((GapKind::Human, e.reason.clone().unwrap_or_else(|| "needs a human".into())))
            }
            "retry_requested" => Some((GapKind::Queued, "retry requested".into())),
            "resumed" => Some((GapKind::Queued, "resumed by a message".into())),
            "started" | "complete" | "failed" | "timed_out" | "killed" => None,
            _ => continue,
        };
        if let Some((k, from, why)) = cur.take() {
            out.push((k, from, e.at, why));
        }
        cur = opens.map(|(k, why)| (k, e.at, why));
    }
    if let Some((k, from, why)) = cur
        && (run.open || k == GapKind::Human)
    {
        out.push((k, from, t1, why));
    }
    out.retain(|(_, a, b, _)| b > a);
    out
}

/// Lays out the picture of `runs` (in the order given: one row each).
pub fn layout(runs: &[AgentRun], o: &Options) -> Layout {
    let width = f64::from(o.width.max(400));
    let t0 = runs.iter().map(|r| r.spawned).chain(runs.iter().flat_map(|r| r.attempts.iter().map(|a| a.start))).min();
    let t0 = t0.unwrap_or(o.now);
    let mut t1 = t0;
    for r in runs {
        let times = r.attempts.iter().flat_map(|a| [Some(a.start), a.end]).flatten();
        for t in times.chain(r.events.iter().map(|e| e.at)).chain([r.spawned]) {
            t1 = t1.max(t);
        }
        if r.open || r.attempts.iter().any(|a| a.end.is_none()) {
            t1 = t1.max(o.now);
        }
    }
    // At least a second of axis: a run of one instant still has somewhere to be drawn.
    if ms_between(t0, t1) < 1_000 {
        t1 = t0.checked_add(jiff::SignedDuration::from_millis(1_000)).unwrap_or(t1);
    }
    let span = ms_between(t0, t1) as f64;

    let label_width = (width * 0.27).clamp(160.0, 380.0);
    let plot_x0 = label_width + 10.0;
    let plot_x1 = width - 20.0;
    let pw = plot_x1 - plot_x0;
    let x_of = |t: Timestamp| plot_x0 + (ms_between(t0, t) as f64 / span * pw).clamp(0.0, pw);
    let tz = &o.tz;

    // The legend, wrapped to the width.
    let mut legend = Vec::new();
    let items = Outcome::ALL
        .iter()
        .map(|&k| (Swatch::Bar(k), k.label()))
        .chain(GapKind::ALL.iter().map(|&k| (Swatch::Line(k), k.label())))
        .chain([MarkKind::Escalation, MarkKind::Resolved].iter().map(|&k| (Swatch::Mark(k), k.label())));
    let (mut lx, mut ly) = (10.0, 44.0);
    for (swatch, text) in items {
        let w = 26.0 + text.chars().count() as f64 * AXIS_FONT * CHAR_EM + 16.0;
        if lx + w > width - 10.0 && lx > 10.0 {
            lx = 10.0;
            ly += 18.0;
        }
        legend.push(LegendItem { x: lx, y: ly, swatch, text: text.to_string() });
        lx += w;
    }
    let axis_y = ly + 26.0;
    let rows_y0 = axis_y + 8.0;

    // Ticks: the smallest step that leaves room between its labels, aligned on the wall clock.
    let step = TICK_STEPS_MS
        .iter()
        .copied()
        .find(|&s| s as f64 / span * pw >= tick_room(s))
        .unwrap_or(*TICK_STEPS_MS.last().expect("steps"));
    let offset_ms = i64::from(tz.to_offset(t0).seconds()) * 1000;
    let local0 = t0.as_millisecond() + offset_ms;
    let mut tick = local0.div_euclid(step) * step + if local0.rem_euclid(step) == 0 { 0 } else { step };
    let fmt = tick_format(step);
    let mut ticks = Vec::new();
    let mut last_day = None;
    while tick - offset_ms <= t1.as_millisecond() {
        if let Ok(t) = Timestamp::from_millisecond(tick - offset_ms) {
            let day = clock(t, tz, "%Y-%m-%d");
            // Where the date changes (a run past midnight), the tick says the day.
            let label = if step >= 86_400_000 || (last_day.is_some() && last_day.as_ref() != Some(&day)) {
                clock(t, tz, "%b %d")
            } else {
                clock(t, tz, fmt)
            };
            last_day = Some(day);
            ticks.push(Tick { x: x_of(t), label });
        }
        tick += step;
    }

    let label_chars = chars_fitting(label_width - 12.0, LABEL_FONT);
    let mut rows = Vec::new();
    for (i, r) in runs.iter().enumerate() {
        let y = rows_y0 + i as f64 * ROW_HEIGHT;
        let label_id = shorten(&r.id, label_chars.min(40));
        let left = label_chars.saturating_sub(label_id.chars().count() + 1);
        let label_task = if left >= 4 { shorten(&r.task, left) } else { String::new() };
        let full = format!("{} ({}, {}): {}", r.id, r.role, r.status, r.task);
        let mut bars = Vec::new();
        for a in &r.attempts {
            let end = a.end.unwrap_or(t1);
            let x = x_of(a.start);
            let w = (x_of(end) - x).max(MIN_BAR);
            let mut title = format!("{} attempt {}: {}", r.id, a.n, a.outcome.label());
            if let Some(why) = &a.reason {
                let _ = write!(title, ": {why}");
            }
            let to = match a.end {
                Some(e) => clock(e, tz, "%H:%M:%S"),
                None => "now".into(),
            };
            let _ =
                write!(title, " ({} to {to}, {})", clock(a.start, tz, "%H:%M:%S"), duration(ms_between(a.start, end)));
            bars.push(BarLayout { attempt: a.n, outcome: a.outcome, x, w, title });
        }
        let mut gap_rows = Vec::new();
        for (kind, from, to, why) in gaps(r, t1) {
            let x = x_of(from);
            let w = x_of(to) - x;
            let title = format!(
                "{}: {}: {why} ({} to {}, {})",
                r.id,
                kind.label(),
                clock(from, tz, "%H:%M:%S"),
                clock(to, tz, "%H:%M:%S"),
                duration(ms_between(from, to))
            );
            let fits = chars_fitting(w - 6.0, GAP_FONT);
            let text = (fits >= 6).then(|| shorten(&why, fits));
            gap_rows.push(GapLayout { kind, x, w, title, text });
        }
        let mut marks = Vec::new();
        for e in &r.events {
            let (kind, what) = match e.kind.as_str() {
                "escalation_opened" => (MarkKind::Escalation, "opened"),
                "escalation_resolved" => (MarkKind::Resolved, "resolved"),
                _ => continue,
            };
            let n = e.escalation.map(|n| format!(" #{n}")).unwrap_or_default();
            let why = e.reason.as_deref().map(|w| format!(": {w}")).unwrap_or_default();
            let title = format!("{}: escalation{n} {what} at {}{why}", r.id, clock(e.at, tz, "%H:%M:%S"));
            marks.push(MarkLayout { kind, x: x_of(e.at), title });
        }
        rows.push(RowLayout { id: r.id.clone(), y, label_id, label_task, full, bars, gaps: gap_rows, marks });
    }
    let rows_y1 = rows_y0 + runs.len().max(1) as f64 * ROW_HEIGHT;
    let height = rows_y1 + 30.0;
    let agents = if runs.len() == 1 { "1 agent".to_string() } else { format!("{} agents", runs.len()) };
    let title = format!(
        "corral timeline: {agents}, {} to {} ({})",
        clock(t0, tz, "%Y-%m-%d %H:%M:%S"),
        clock(t1, tz, if ms_between(t0, t1) >= 86_400_000 { "%Y-%m-%d %H:%M:%S" } else { "%H:%M:%S" }),
        clock(t0, tz, "UTC%:z")
    );
    Layout { width, height, title, t0, t1, plot_x0, plot_x1, rows_y0, rows_y1, label_width, legend, ticks, rows }
}

fn num(v: f64) -> String {
    let r = (v * 10.0).round() / 10.0;
    if r.fract() == 0.0 { format!("{}", r as i64) } else { format!("{r:.1}") }
}

fn diamond(x: f64, cy: f64, r: f64) -> String {
    format!(
        "{},{} {},{} {},{} {},{}",
        num(x),
        num(cy - r),
        num(x + r),
        num(cy),
        num(x),
        num(cy + r),
        num(x - r),
        num(cy)
    )
}

/// The picture as a standalone SVG document.
pub fn svg(l: &Layout) -> String {
    let mut s = String::with_capacity(4096 + l.rows.len() * 1024);
    let (w, h) = (num(l.width), num(l.height));
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" \
         font-family=\"{FONT}\" data-t0=\"{}\" data-t1=\"{}\" data-plot-x0=\"{}\" data-plot-x1=\"{}\">",
        l.t0.as_millisecond(),
        l.t1.as_millisecond(),
        num(l.plot_x0),
        num(l.plot_x1)
    );
    let _ = writeln!(s, "<title>{}</title>", xml_text(&l.title));
    let _ = writeln!(
        s,
        "<defs><clipPath id=\"labels\"><rect x=\"0\" y=\"0\" width=\"{}\" height=\"{h}\"/></clipPath>\
         <clipPath id=\"plot\"><rect x=\"{}\" y=\"0\" width=\"{}\" height=\"{h}\"/></clipPath></defs>",
        num(l.label_width),
        num(l.plot_x0 - 6.0),
        num(l.plot_x1 - l.plot_x0 + 12.0)
    );
    let _ = writeln!(s, "<rect class=\"background\" x=\"0\" y=\"0\" width=\"{w}\" height=\"{h}\" fill=\"#ffffff\"/>");
    let _ = writeln!(s, "<text x=\"10\" y=\"22\" font-size=\"14\" font-weight=\"bold\">{}</text>", xml_text(&l.title));

    // Legend.
    let _ = writeln!(s, "<g class=\"legend\" font-size=\"{}\">", num(AXIS_FONT));
    for it in &l.legend {
        let cy = it.y - 4.0;
        match it.swatch {
            Swatch::Bar(k) => {
                let _ = write!(
                    s,
                    "<rect class=\"swatch {}\" x=\"{}\" y=\"{}\" width=\"20\" height=\"10\" fill=\"{}\"/>",
                    k.name(),
                    num(it.x),
                    num(cy - 5.0),
                    k.colour()
                );
            }
            Swatch::Line(k) => {
                let _ = write!(
                    s,
                    "<line class=\"swatch {}\" x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"{}\" stroke-width=\"2\"{}/>",
                    k.name(),
                    num(it.x),
                    num(cy),
                    num(it.x + 20.0),
                    num(cy),
                    k.colour(),
                    k.dash()
                );
            }
            Swatch::Mark(k) => s.push_str(&mark_svg(k, it.x + 10.0, cy, None)),
        }
        let _ = writeln!(s, "<text x=\"{}\" y=\"{}\">{}</text>", num(it.x + 26.0), num(it.y), xml_text(&it.text));
    }
    s.push_str("</g>\n");

    // Axis: tick labels above and below the rows, light grid lines across them.
    let _ = writeln!(s, "<g class=\"axis\" font-size=\"{}\" fill=\"#333333\">", num(AXIS_FONT));
    for t in &l.ticks {
        let x = num(t.x);
        let _ = writeln!(
            s,
            "<line class=\"grid\" x1=\"{x}\" y1=\"{}\" x2=\"{x}\" y2=\"{}\" stroke=\"#dddddd\" stroke-width=\"1\"/>\
             <text class=\"tick\" x=\"{x}\" y=\"{}\" text-anchor=\"middle\">{}</text>\
             <text class=\"tick\" x=\"{x}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            num(l.rows_y0 - 4.0),
            num(l.rows_y1),
            num(l.rows_y0 - 10.0),
            xml_text(&t.label),
            num(l.rows_y1 + 14.0),
            xml_text(&t.label)
        );
    }
    s.push_str("</g>\n");

    if l.rows.is_empty() {
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" font-size=\"12\" fill=\"#555555\">no agents</text>",
            num(l.plot_x0),
            num(l.rows_y0 + 16.0)
        );
    }
    for (i, r) in l.rows.iter().enumerate() {
        let cy = r.y + ROW_HEIGHT / 2.0;
        let _ = writeln!(s, "<g class=\"row\" data-agent=\"{}\" data-row=\"{i}\">", xml_text(&r.id));
        if i % 2 == 1 {
            let _ = writeln!(
                s,
                "<rect class=\"stripe\" x=\"0\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"#f4f4f4\"/>",
                num(r.y),
                num(l.width),
                num(ROW_HEIGHT)
            );
        }
        let _ = write!(
            s,
            "<text class=\"label\" x=\"8\" y=\"{}\" font-size=\"{}\" clip-path=\"url(#labels)\">\
             <title>{}</title><tspan font-weight=\"bold\">{}</tspan>",
            num(cy + 4.0),
            num(LABEL_FONT),
            xml_text(&r.full),
            xml_text(&r.label_id)
        );
        if !r.label_task.is_empty() {
            let _ = write!(
                s,
                "<tspan class=\"task\" dx=\"{}\" fill=\"#555555\">{}</tspan>",
                num(LABEL_FONT * CHAR_EM),
                xml_text(&r.label_task)
            );
        }
        s.push_str("</text>\n");
        let _ = writeln!(s, "<g clip-path=\"url(#plot)\">");
        for g in &r.gaps {
            let _ = writeln!(
                s,
                "<g class=\"gap {}\"><title>{}</title><line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"{}\" \
                 stroke-width=\"2\"{}/>{}</g>",
                g.kind.name(),
                xml_text(&g.title),
                num(g.x),
                num(cy),
                num(g.x + g.w),
                num(cy),
                g.kind.colour(),
                g.kind.dash(),
                match &g.text {
                    Some(t) => format!(
                        "<text x=\"{}\" y=\"{}\" font-size=\"{}\" fill=\"#444444\">{}</text>",
                        num(g.x + 3.0),
                        num(cy - 3.0),
                        num(GAP_FONT),
                        xml_text(t)
                    ),
                    None => String::new(),
                }
            );
        }
        for b in &r.bars {
            let _ = writeln!(
                s,
                "<rect class=\"bar {}\" data-attempt=\"{}\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{}\">\
                 <title>{}</title></rect>",
                b.outcome.name(),
                b.attempt,
                num(b.x),
                num(cy - BAR_HEIGHT / 2.0),
                num(b.w),
                num(BAR_HEIGHT),
                b.outcome.colour(),
                xml_text(&b.title)
            );
        }
        for m in &r.marks {
            s.push_str(&mark_svg(m.kind, m.x, cy, Some(&m.title)));
            s.push('\n');
        }
        s.push_str("</g>\n</g>\n");
    }
    s.push_str("</svg>\n");
    s
}

fn mark_svg(k: MarkKind, x: f64, cy: f64, title: Option<&str>) -> String {
    let title = title.map(|t| format!("<title>{}</title>", xml_text(t))).unwrap_or_default();
    let fill = match k {
        MarkKind::Escalation => MarkKind::COLOUR,
        MarkKind::Resolved => "#ffffff",
    };
    format!(
        "<polygon class=\"mark {}\" points=\"{}\" fill=\"{fill}\" stroke=\"#000000\" stroke-width=\"1\">{title}</polygon>",
        k.name(),
        diamond(x, cy, 6.0)
    )
}

/// A minimal page holding the SVG: no script, nothing loaded from anywhere, and a content
/// security policy that would refuse both.
pub fn html(svg: &str, title: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n\
         <title>{}</title>\n<style>body {{ margin: 16px; background: #ffffff; }} svg {{ display: block; }}</style>\n\
         </head>\n<body>\n{svg}</body>\n</html>\n",
        xml_text(title)
    )
}
