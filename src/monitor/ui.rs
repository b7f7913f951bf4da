//! Drawing the dashboard: a header with counts and health, one row per agent with a
//! progress bar and coloured anomalies, the selected agent's detail and log panes, an
//! escalations pane, the keys, and the help overlay. Fits 80x24.

use super::{Input, KEYS, Model, Prompt};
use crate::cli::output::{age, bar};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Table, TableState, Wrap};

/// Agent text as the dashboard shows it: escaped before it reaches the buffer, so nothing
/// an agent wrote can move the cursor, recolour or retitle the terminal, or break a row.
fn shown(s: &str) -> String {
    crate::display::escape(s).into_owned()
}

fn status_color(s: &str) -> Color {
    match s {
        "running" => Color::Green,
        "complete" => Color::Blue,
        "queued" | "retrying" | "blocked" => Color::Yellow,
        "stale" | "stopping" => Color::Magenta,
        _ => Color::Red,
    }
}

fn anomaly_color(a: &str) -> Color {
    if a.starts_with("RETRYING") || a.starts_with("QUEUED") || a == "SLOW" {
        Color::Yellow
    } else if a == "BLOCKED" || a == "STALE" {
        Color::Magenta
    } else {
        Color::Red
    }
}

pub fn draw(f: &mut Frame, m: &Model, table: &mut TableState) {
    let open: Vec<_> = m.escalations.iter().filter(|e| e.is_open()).collect();
    let esc_height = if open.is_empty() { 0 } else { (open.len() as u16 + 2).min(6) };
    // The panes take about half of what the header, footer and escalations leave, and at
    // least 6 rows, but never so much that fewer than 3 rows of the table remain.
    let rest = f.area().height.saturating_sub(3 + esc_height);
    let pane_height = if m.detail_pane || m.log_pane { (rest / 2).max(6).min(rest.saturating_sub(4)) } else { 0 };
    let [head, body, panes, esc, foot] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Min(3),
        Constraint::Length(pane_height),
        Constraint::Length(esc_height),
        Constraint::Length(1),
    ])
    .areas(f.area());
    header(f, m, head);
    agents(f, m, body, table);
    if pane_height > 0 {
        match (m.detail_pane, m.log_pane) {
            (true, true) => {
                let [left, right] =
                    Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(panes);
                detail(f, m, left);
                log(f, m, right);
            }
            (true, false) => detail(f, m, panes),
            _ => log(f, m, panes),
        }
    }
    if esc_height > 0 {
        let lines: Vec<Line> = open
            .iter()
            .map(|e| {
                Line::from(vec![
                    Span::styled(format!("#{} ", e.n), Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)),
                    Span::raw(format!("{}: {}", shown(e.agent_id.as_str()), shown(&e.reason))),
                ])
            })
            .collect();
        let p = Paragraph::new(lines)
            .block(Block::new().borders(Borders::TOP).title(format!(" escalations ({}) ", open.len())));
        f.render_widget(p, esc);
    }
    footer(f, m, foot);
    if m.help {
        help(f);
    }
}

/// The help overlay: every key, in a box over the middle of the screen.
fn help(f: &mut Frame) {
    let area = f.area();
    let keyw = KEYS.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let lines: Vec<Line> = KEYS
        .iter()
        .map(|(k, what)| {
            Line::from(vec![
                Span::styled(format!(" {k:keyw$}  "), Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD)),
                Span::raw(*what),
            ])
        })
        .collect();
    let width = (KEYS.iter().map(|(_, w)| w.len()).max().unwrap_or(0) + keyw + 5) as u16;
    let (w, h) = (width.min(area.width), (lines.len() as u16 + 2).min(area.height));
    let r = Rect { x: area.x + (area.width - w) / 2, y: area.y + (area.height - h) / 2, width: w, height: h };
    f.render_widget(Clear, r);
    f.render_widget(Paragraph::new(lines).block(Block::bordered().title(" keys (any key closes) ")), r);
}

/// Everything about the selected agent that does not fit a row: why it is where it is,
/// its task in full, cost, attempts and what it last found.
fn detail(f: &mut Frame, m: &Model, area: Rect) {
    let sel = m.selected_agent();
    let title = match sel {
        Some(v) => format!(" detail {} ", shown(&v.agent_id)),
        None => " detail ".into(),
    };
    let dim = Style::new().fg(Color::DarkGray);
    let label = |s: &str| Span::styled(format!("{s} "), Style::new().fg(Color::Cyan));
    let mut lines: Vec<Line> = Vec::new();
    match (sel, &m.detail) {
        (None, _) => lines.push(Line::styled("no agent selected", dim)),
        (Some(v), Some(Ok(s))) if s.agent.agent_id == v.agent_id => {
            // The row's view is the newer one (it is refreshed with every event).
            let mut st =
                vec![label("status"), Span::styled(shown(&v.status), Style::new().fg(status_color(&v.status)))];
            if v.needs_human {
                st.push(Span::styled("  needs a human", Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)));
            }
            if let Some(n) = v.escalation {
                st.push(Span::raw(format!("  escalation #{n}")));
            }
            st.push(Span::raw(format!("  role {}", shown(&v.role))));
            lines.push(Line::from(st));
            if let Some(r) = &v.reason {
                lines.push(Line::from(vec![label("why"), Span::raw(shown(r))]));
            }
            if let Some(t) = v.next_attempt_in_seconds {
                lines.push(Line::from(vec![label("next attempt in"), Span::raw(age(Some(t)))]));
            }
            if let Some(t) = &v.waiting_until {
                lines.push(Line::from(vec![label("waiting until"), Span::raw(shown(t))]));
            }
            if let Some(t) = &v.not_before {
                lines.push(Line::from(vec![label("not before"), Span::raw(shown(t))]));
            }
            lines.push(Line::from(label(&format!(
                "attempts ({} of at most {}):",
                v.budget_attempt,
                v.max_retries + 1
            ))));
            for at in &s.attempts {
                let outcome = match (&at.ended_at, at.exit_code, at.signal) {
                    (None, ..) => match at.pid {
                        Some(p) => format!("running, pid {p}"),
                        None => "starting".into(),
                    },
                    (Some(_), Some(c), _) => format!("exit {c}"),
                    (Some(_), None, Some(sig)) => format!("signal {sig}"),
                    (Some(_), None, None) => "ended".into(),
                };
                let mut l = vec![Span::raw(format!("  #{} {outcome}", at.attempt))];
                if let Some(t) = &at.failure_type {
                    l.push(Span::styled(format!(" {}", shown(t)), Style::new().fg(Color::Red)));
                }
                if let Some(r) = &at.reason {
                    l.push(Span::raw(format!(": {}", shown(r))));
                }
                if let Some(a) = &at.action {
                    l.push(Span::styled(format!(" -> {}", shown(a)), dim));
                }
                lines.push(Line::from(l));
            }
            if !s.findings.is_empty() {
                lines.push(Line::from(label("last findings:")));
                for x in s.findings.iter().rev().take(5).rev() {
                    lines.push(Line::raw(format!("  - {}", shown(&crate::protocol::files::finding_text(x)))));
                }
            }
            let mut task = v.task.lines();
            lines.push(Line::from(vec![label("task"), Span::raw(shown(task.next().unwrap_or("")))]));
            lines.extend(task.map(|l| Line::raw(format!("  {}", shown(l)))));
            if v.cost_usd.is_some() || v.tokens.is_some() {
                let mut c = String::new();
                if let Some(usd) = v.cost_usd {
                    c.push_str(&format!("${usd:.4}"));
                }
                if let Some(t) = v.tokens {
                    c.push_str(&format!("  {} tokens in, {} out", t.input, t.output));
                }
                if let Some(n) = v.turns {
                    c.push_str(&format!("  {n} turns"));
                }
                lines.push(Line::from(vec![label("cost"), Span::raw(c.trim_start().to_string())]));
            }
        }
        (Some(_), Some(Err(e))) => lines.push(Line::styled(format!("cannot show it: {}", shown(e)), dim)),
        (Some(_), _) => lines.push(Line::styled("asking the supervisor...", dim)),
    }
    let p = Paragraph::new(lines).wrap(Wrap { trim: false }).block(Block::new().borders(Borders::TOP).title(title));
    f.render_widget(p, area);
}

/// The last lines of the selected agent's log (escaped when they were read).
fn log(f: &mut Frame, m: &Model, area: Rect) {
    let sel = m.selected_agent();
    let title = match sel {
        Some(v) => format!(" log {} ", shown(&v.agent_id)),
        None => " log ".into(),
    };
    let rows = area.height.saturating_sub(1) as usize;
    let lines: Vec<Line> = match (sel, &m.log) {
        (Some(v), Some((id, log))) if *id == v.agent_id => {
            if log.is_empty() {
                vec![Line::styled("(nothing logged yet)", Style::new().fg(Color::DarkGray))]
            } else {
                log[log.len().saturating_sub(rows)..].iter().map(|l| Line::raw(l.as_str())).collect()
            }
        }
        (Some(_), _) => vec![Line::styled("reading...", Style::new().fg(Color::DarkGray))],
        (None, _) => vec![Line::styled("no agent selected", Style::new().fg(Color::DarkGray))],
    };
    f.render_widget(Paragraph::new(lines).block(Block::new().borders(Borders::TOP).title(title)), area);
}

fn header(f: &mut Frame, m: &Model, area: Rect) {
    let mut spans = vec![Span::styled("corral monitor", Style::new().add_modifier(Modifier::BOLD))];
    spans.push(Span::raw(format!("  {} agents:", m.agents.len())));
    for (s, n) in m.counts() {
        spans.push(Span::styled(format!(" {n} {}", shown(&s)), Style::new().fg(status_color(&s))));
    }
    let mut lines = vec![Line::from(spans)];
    if let Some(h) = &m.health {
        let b = &h.breaker;
        let breaker_style =
            if b.state == "closed" { Style::new().fg(Color::Green) } else { Style::new().fg(Color::Red) };
        let mut l = vec![
            Span::raw(format!("capacity {}/{}  queue {}  breaker ", h.running, h.max_concurrent, h.queued.len())),
            Span::styled(shown(&b.state), breaker_style),
        ];
        if h.cost_usd > 0.0 {
            l.push(Span::raw(format!("  cost ${:.2}", h.cost_usd)));
        }
        if let Some(why) = &h.held_because {
            l.push(Span::styled(format!("  held: {}", shown(why)), Style::new().fg(Color::Yellow)));
        }
        for p in provider_limits(&h.providers) {
            l.push(Span::styled(format!("  {}", shown(&p)), Style::new().fg(Color::Yellow)));
        }
        lines.push(Line::from(l));
    }
    f.render_widget(Paragraph::new(lines), area);
}

/// The providers that hold their agents back now: a rate limit's hold until its reset, or a
/// concurrency lowered after a burst of them.
pub fn provider_limits(providers: &[crate::ipc::ProviderView]) -> Vec<String> {
    providers
        .iter()
        .filter_map(|p| {
            let until = p.held_until.as_deref().map(|t| {
                let at = t.parse::<jiff::Timestamp>().ok().map(|t| t.to_zoned_datetime(jiff::tz::TimeZone::system()));
                at.map_or_else(|| t.to_string(), |z| z.strftime("%H:%M:%S").to_string())
            });
            match (until, p.max_concurrent) {
                (Some(u), _) => Some(format!("{} held until {u} (rate limit)", p.name)),
                (None, Some(max)) => Some(format!("{} {}/{max} (lowered after rate limits)", p.name, p.running)),
                (None, None) => None,
            }
        })
        .collect()
}

fn agents(f: &mut Frame, m: &Model, area: Rect, state: &mut TableState) {
    let visible = m.visible();
    // Only the rows on screen are built: 1,000 agents cost what 20 do.
    let height = area.height.saturating_sub(1) as usize;
    let first = m.selected.saturating_sub(height.saturating_sub(1));
    // Ids are never cut: their column is as wide as the longest on screen; the task, last,
    // takes what is left (shortened with `~`).
    let on_screen = || visible.iter().skip(first).take(height);
    let idw = on_screen().map(|v| shown(&v.agent_id).chars().count()).max().unwrap_or(5).max(5) as u16;
    let aw = on_screen()
        .map(|v| v.anomalies.iter().map(|a| shown(a).chars().count() + 1).sum::<usize>())
        .max()
        .unwrap_or(0)
        .clamp(9, 30) as u16;
    let w = widths(area.width, idw, aw);
    let rows: Vec<Row> = visible
        .iter()
        .skip(first)
        .take(height)
        .map(|v| {
            let pm = match (&v.phase, &v.milestone) {
                (Some(p), Some(ms)) => format!("{}/{}", shown(p), shown(ms)),
                (Some(p), None) => shown(p),
                (None, Some(ms)) => format!("-/{}", shown(ms)),
                (None, None) => "-".into(),
            };
            let anomalies: Vec<Span> = v
                .anomalies
                .iter()
                .map(|a| {
                    Span::styled(
                        format!("{} ", shown(a)),
                        Style::new().fg(anomaly_color(a)).add_modifier(Modifier::BOLD),
                    )
                })
                .collect();
            Row::new(vec![
                Cell::from(shown(&v.agent_id)),
                Cell::from(Span::styled(shown(&v.status), Style::new().fg(status_color(&v.status)))),
                Cell::from(match w.bar {
                    0 => v.progress.map_or("--".into(), |p| format!("{:>3}%", (p.clamp(0.0, 1.0) * 100.0).round())),
                    n => bar(v.progress, n),
                }),
                Cell::from(pm),
                Cell::from(age(v.age_seconds)),
                Cell::from(format!("{}/{}", v.budget_attempt, v.max_retries + 1)),
                Cell::from(Line::from(anomalies)),
                Cell::from(crate::display::clip(v.task.lines().next().unwrap_or(""), w.task)),
            ])
        })
        .collect();
    let widths = [
        Constraint::Length(idw),
        Constraint::Length(9),
        Constraint::Length(w.progress),
        Constraint::Length(w.pm),
        Constraint::Length(6),
        Constraint::Length(4),
        Constraint::Length(w.anomalies),
        Constraint::Fill(1),
    ];
    let t = Table::new(rows, widths)
        .header(
            Row::new(["AGENT", "STATUS", "PROGRESS", "PHASE/MILESTONE", "AGE", "TRY", "ANOMALIES", "TASK"])
                .style(Style::new().add_modifier(Modifier::BOLD)),
        )
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    state.select(if visible.is_empty() { None } else { Some(m.selected - first) });
    f.render_stateful_widget(t, area, state);
}

/// Column widths that do not depend on a row.
#[derive(Debug, PartialEq)]
struct Widths {
    /// The progress bar's width inside its column; 0: the percentage alone.
    bar: usize,
    progress: u16,
    pm: u16,
    anomalies: u16,
    task: usize,
}

/// The table's columns for a terminal `width` wide: the id column is never cut; when the
/// row does not fit, the progress bar, phase/milestone and anomalies columns shrink, in that
/// order, and the task takes what is left (nothing, at the very worst).
fn widths(width: u16, idw: u16, aw: u16) -> Widths {
    const TASK: u16 = 16;
    // status, age and try, and the seven gaps between the eight columns
    let fixed = idw + 9 + 6 + 4 + 7;
    let steps = [(8, 15, 16, aw), (4, 11, 16, aw), (4, 11, 10, aw), (0, 4, 10, aw), (0, 4, 10, aw.min(9))];
    let (bar, progress, pm, anomalies) = steps
        .iter()
        .copied()
        .find(|(_, p, pm, a)| fixed + p + pm + a + TASK <= width)
        .unwrap_or(steps[steps.len() - 1]);
    let task = width.saturating_sub(fixed + progress + pm + anomalies) as usize;
    Widths { bar, progress, pm, anomalies, task }
}

fn footer(f: &mut Frame, m: &Model, area: Rect) {
    let line = match &m.input {
        Some(Input::Text { what, buf }) => {
            let label = match what {
                Prompt::Tell => "message for the agent",
                Prompt::Filter => "role filter (empty: all)",
                Prompt::Resolve => "note resolving the escalation",
            };
            Line::from(vec![
                Span::styled(format!("{label}: "), Style::new().fg(Color::Cyan)),
                Span::raw(format!("{}_", shown(buf))),
            ])
        }
        Some(Input::ConfirmKill(id)) => Line::from(vec![Span::styled(
            format!("kill {} ? y/N", shown(id)),
            Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        )]),
        _ if !m.message.is_empty() => Line::from(Span::styled(shown(&m.message), Style::new().fg(Color::Cyan))),
        _ => {
            let filter = m.role_filter.as_deref().map(|r| format!(" [role {}]", shown(r))).unwrap_or_default();
            Line::from(format!("up/down select  d detail  l log  k kill  r retry  t tell  ? help  q quit{filter}"))
        }
    };
    f.render_widget(Paragraph::new(line), area);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn providers_holding_agents_back_are_named_with_their_limit() {
        use crate::ipc::ProviderView;
        let p = |name: &str, held: Option<&str>, max: Option<usize>| ProviderView {
            name: name.into(),
            held_until: held.map(str::to_string),
            max_concurrent: max,
            running: 1,
            reason: String::new(),
        };
        let l = provider_limits(&[
            p("anthropic", Some("2026-12-04T19:00:05Z"), None),
            p("openai", None, Some(2)),
            p("idle", None, None),
        ]);
        assert_eq!(l.len(), 2, "{l:?}");
        assert!(l[0].starts_with("anthropic held until ") && l[0].ends_with(":05 (rate limit)"), "{l:?}");
        assert_eq!(l[1], "openai 1/2 (lowered after rate limits)");
    }

    #[test]
    fn narrow_terminals_shrink_other_columns_before_the_id() {
        // wide: everything at full size, the task takes the rest
        let w = widths(160, 21, 9);
        assert_eq!((w.bar, w.progress, w.pm), (8, 15, 16));
        assert_eq!(w.task, 160 - (21 + 9 + 6 + 4 + 7 + 15 + 16 + 9));
        // 80 columns with a 21-character id: the row still fits, the task is shortened
        let w = widths(80, 21, 9);
        assert!(21 + 9 + 6 + 4 + 7 + w.progress + w.pm + w.anomalies + w.task as u16 <= 80, "{w:?}");
        assert!(w.task >= 8, "{w:?}");
        // very long ids: the task goes, the id stays whole
        let w = widths(80, 40, 30);
        assert_eq!((w.bar, w.progress, w.pm, w.anomalies, w.task), (0, 4, 10, 9, 0));
    }
}
