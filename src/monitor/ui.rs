//! Drawing the dashboard: a header with counts and health, one row per agent with a
//! progress bar and coloured anomalies, an escalations pane, and the keys. Fits 80x24.

use super::{Input, Model, Prompt};
use crate::cli::output::{age, bar};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row, Table, TableState};

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
    let [head, body, esc, foot] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Min(3),
        Constraint::Length(esc_height),
        Constraint::Length(1),
    ])
    .areas(f.area());
    header(f, m, head);
    agents(f, m, body, table);
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
        if let Some(why) = &h.held_because {
            l.push(Span::styled(format!("  held: {}", shown(why)), Style::new().fg(Color::Yellow)));
        }
        lines.push(Line::from(l));
    }
    f.render_widget(Paragraph::new(lines), area);
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
    let fixed = idw + 9 + 15 + 16 + 6 + 4 + aw + 7;
    let taskw = area.width.saturating_sub(fixed).max(8) as usize;
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
                Cell::from(bar(v.progress, 8)),
                Cell::from(pm),
                Cell::from(age(v.age_seconds)),
                Cell::from(format!("{}/{}", v.budget_attempt, v.max_retries + 1)),
                Cell::from(Line::from(anomalies)),
                Cell::from(crate::display::clip(v.task.lines().next().unwrap_or(""), taskw)),
            ])
        })
        .collect();
    let widths = [
        Constraint::Min(idw),
        Constraint::Length(9),
        Constraint::Length(15),
        Constraint::Length(16),
        Constraint::Length(6),
        Constraint::Length(4),
        Constraint::Length(aw),
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
        _ if !m.message.is_empty() => Line::from(Span::styled(shown(&m.message), Style::new().fg(Color::Cyan))),
        _ => {
            let filter = m.role_filter.as_deref().map(|r| format!(" [role {}]", shown(r))).unwrap_or_default();
            Line::from(format!("up/down select  k kill  r retry  t tell  e resolve  f filter  q quit{filter}"))
        }
    };
    f.render_widget(Paragraph::new(line), area);
}
