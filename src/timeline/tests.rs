use super::*;

fn t(s: &str) -> Timestamp {
    format!("2026-12-03T{s}Z").parse().unwrap()
}

fn ev(at: &str, kind: &str, reason: Option<&str>) -> Event {
    Event { at: t(at), kind: kind.into(), reason: reason.map(str::to_string), escalation: None, blocker: false }
}

fn opts(now: &str) -> Options {
    Options { width: 1400, tz: TimeZone::UTC, now: t(now) }
}

fn run(id: &str, task: &str, spawned: &str, attempts: Vec<Attempt>, events: Vec<Event>, open: bool) -> AgentRun {
    AgentRun {
        id: id.into(),
        role: "R".into(),
        task: task.into(),
        status: if open { "running".into() } else { "complete".into() },
        spawned: t(spawned),
        open,
        attempts,
        events,
    }
}

fn attempt(n: u32, start: &str, end: Option<&str>, outcome: Outcome) -> Attempt {
    Attempt { n, start: t(start), end: end.map(t), outcome, reason: Some(format!("reason {n}")) }
}

/// A crash, a backoff, a retry that completes; a second agent still running at `now`.
fn fixture() -> Vec<AgentRun> {
    vec![
        run(
            "agent-001-A",
            "flaky",
            "12:00:00",
            vec![
                attempt(1, "12:00:00", Some("12:00:10"), Outcome::Failed),
                attempt(2, "12:00:20", Some("12:00:30"), Outcome::Complete),
            ],
            vec![
                ev("12:00:00", "started", None),
                ev("12:00:10", "retrying", Some("retry 1 of 3 after crash: exited with code 1")),
                ev("12:00:20", "started", None),
                ev("12:00:30", "complete", None),
            ],
            false,
        ),
        run(
            "agent-002-B",
            "slow",
            "12:00:00",
            vec![attempt(1, "12:00:05", None, Outcome::Running)],
            vec![ev("12:00:00", "queued", Some("capacity: 1 of 1 agents running")), ev("12:00:05", "started", None)],
            true,
        ),
    ]
}

#[test]
fn bars_sit_at_their_times_in_their_outcome_colours() {
    let l = layout(&fixture(), &opts("12:00:40"));
    assert_eq!(l.t0, t("12:00:00"));
    assert_eq!(l.t1, t("12:00:40"), "a running attempt reaches to now");
    let pw = l.plot_x1 - l.plot_x0;
    let x = |secs: f64| l.plot_x0 + secs / 40.0 * pw;
    assert_eq!(l.rows.len(), 2);
    let a = &l.rows[0];
    assert_eq!(a.bars.len(), 2);
    assert!((a.bars[0].x - x(0.0)).abs() < 1e-6 && (a.bars[0].w - (x(10.0) - x(0.0))).abs() < 1e-6);
    assert!((a.bars[1].x - x(20.0)).abs() < 1e-6);
    assert_eq!((a.bars[0].outcome, a.bars[1].outcome), (Outcome::Failed, Outcome::Complete));
    assert_eq!(a.bars[0].outcome.colour(), "#d62728");
    assert_eq!(a.bars[1].outcome.colour(), "#2ca02c");
    // The backoff is the line between the bars, with its reason.
    assert_eq!(a.gaps.len(), 1);
    assert_eq!(a.gaps[0].kind, GapKind::Backoff);
    assert!((a.gaps[0].x - x(10.0)).abs() < 1e-6 && (a.gaps[0].w - (x(20.0) - x(10.0))).abs() < 1e-6);
    assert!(a.gaps[0].title.contains("retry 1 of 3 after crash"), "{}", a.gaps[0].title);
    assert!(a.gaps[0].text.as_deref().unwrap().starts_with("retry 1 of 3"), "the reason is written where it fits");
    // Agent B queued for 5s, then runs to the right edge.
    let b = &l.rows[1];
    assert_eq!(b.gaps.len(), 1);
    assert_eq!(b.gaps[0].kind, GapKind::Queued);
    assert!((b.gaps[0].w - (x(5.0) - x(0.0))).abs() < 1e-6);
    assert_eq!(b.bars[0].outcome, Outcome::Running);
    assert!((b.bars[0].x + b.bars[0].w - l.plot_x1).abs() < 1e-6);
    assert!(b.bars[0].title.contains("to now"));
    assert!(b.y > a.y && b.y - a.y >= ROW_HEIGHT, "rows do not overlap");
}

/// No two tick labels overlap: their centres are further apart than half of each one's
/// width, with room to spare.
fn assert_labels_apart(l: &Layout) {
    let width = |t: &Tick| t.label.chars().count() as f64 * AXIS_FONT * CHAR_EM;
    for w in l.ticks.windows(2) {
        assert!(w[1].x - w[0].x >= (width(&w[0]) + width(&w[1])) / 2.0 + 20.0, "{:?}", l.ticks);
    }
}

#[test]
fn ticks_are_wall_clock_steps_with_room_between_labels() {
    let l = layout(&fixture(), &opts("12:00:40"));
    let labels: Vec<&str> = l.ticks.iter().map(|t| t.label.as_str()).collect();
    assert_eq!(
        labels,
        ["12:00:00", "12:00:05", "12:00:10", "12:00:15", "12:00:20", "12:00:25", "12:00:30", "12:00:35", "12:00:40"]
    );
    assert_labels_apart(&l);
    // Three hours: ticks every quarter of an hour on the quarter, in HH:MM.
    let long = vec![run(
        "agent-001-A",
        "long",
        "09:47:13",
        vec![attempt(1, "09:47:13", Some("12:47:00"), Outcome::Complete)],
        vec![],
        false,
    )];
    let l = layout(&long, &opts("13:00:00"));
    let labels: Vec<&str> = l.ticks.iter().map(|t| t.label.as_str()).collect();
    assert_eq!(
        labels,
        ["10:00", "10:15", "10:30", "10:45", "11:00", "11:15", "11:30", "11:45", "12:00", "12:15", "12:30", "12:45"]
    );
    assert_labels_apart(&l);
    // Past midnight, the tick where the date changes says the day.
    let night = vec![AgentRun {
        attempts: vec![Attempt {
            n: 1,
            start: t("23:10:00"),
            end: Some("2026-12-04T01:20:00Z".parse().unwrap()),
            outcome: Outcome::Complete,
            reason: None,
        }],
        ..run("agent-001-A", "night", "23:10:00", vec![], vec![], false)
    }];
    let l = layout(&night, &opts("23:59:00"));
    let labels: Vec<&str> = l.ticks.iter().map(|t| t.label.as_str()).collect();
    assert!(labels.contains(&"Dec 04") && labels.contains(&"23:30") && labels.contains(&"00:30"), "{labels:?}");
    assert_labels_apart(&l);
    // The axis is in the zone asked for.
    let o = Options { width: 1400, tz: TimeZone::fixed(jiff::tz::offset(2)), now: t("13:00:00") };
    let l = layout(&long, &o);
    assert_eq!(l.ticks[0].label, "12:00");
    assert!(l.title.contains("UTC+02:00"), "{}", l.title);
}

#[test]
fn fifty_agents_over_hours_stay_readable() {
    let runs: Vec<AgentRun> = (0..50)
        .map(|i| {
            let start = t("09:00:00").checked_add(jiff::SignedDuration::from_secs(i * 200)).unwrap();
            let end = start.checked_add(jiff::SignedDuration::from_secs(3 * 3600)).unwrap();
            AgentRun {
                id: format!("agent-{:03}-IMPLEMENTER", i + 1),
                role: "IMPLEMENTER".into(),
                task: "Implement the part of the feature that a very long task description goes on about".into(),
                status: "complete".into(),
                spawned: start,
                open: false,
                attempts: vec![Attempt { n: 1, start, end: Some(end), outcome: Outcome::Complete, reason: None }],
                events: vec![],
            }
        })
        .collect();
    let l = layout(&runs, &opts("14:00:00"));
    assert_eq!(l.rows.len(), 50);
    assert!(l.rows.windows(2).all(|w| w[1].y - w[0].y >= ROW_HEIGHT));
    let room = chars_fitting(l.label_width - 12.0, LABEL_FONT);
    for r in &l.rows {
        assert!(r.label_id.starts_with("agent-"), "the id is never cut: {}", r.label_id);
        assert!(r.label_id.chars().count() + 1 + r.label_task.chars().count() <= room, "label fits its column");
        assert!(r.label_task.ends_with('…'), "a long task is shortened, visibly");
        assert!(r.bars[0].x >= l.plot_x0 && r.bars[0].x + r.bars[0].w <= l.plot_x1 + 1e-6);
    }
    assert_labels_apart(&l);
    assert!(l.ticks.len() >= 5, "{:?}", l.ticks);
    assert!(l.width == 1400.0 && l.height < 1400.0);
}

#[test]
fn escalations_and_waits_on_a_human_are_marked() {
    let mut opened = ev("12:00:10", "escalation_opened", Some("crash failure needs a human"));
    opened.escalation = Some(4);
    let runs = vec![AgentRun {
        status: "escalated".into(),
        ..run(
            "agent-001-A",
            "stuck",
            "12:00:00",
            vec![attempt(1, "12:00:00", Some("12:00:10"), Outcome::Failed)],
            vec![
                ev("12:00:00", "started", None),
                opened,
                ev("12:00:10", "escalated", Some("crash failure needs a human")),
            ],
            false,
        )
    }];
    // Another agent's work sets the end of the axis.
    let mut runs = runs;
    runs.push(run(
        "agent-002-B",
        "x",
        "12:00:00",
        vec![attempt(1, "12:00:00", Some("12:00:20"), Outcome::Complete)],
        vec![],
        false,
    ));
    let l = layout(&runs, &opts("18:00:00"));
    assert_eq!(l.t1, t("12:00:20"), "a finished run does not stretch to now");
    let a = &l.rows[0];
    assert_eq!(a.marks.len(), 1);
    assert_eq!(a.marks[0].kind, MarkKind::Escalation);
    assert!((a.marks[0].x - (l.plot_x0 + (l.plot_x1 - l.plot_x0) / 2.0)).abs() < 1e-6);
    assert!(a.marks[0].title.contains("escalation #4 opened"), "{}", a.marks[0].title);
    assert_eq!(a.gaps.len(), 1);
    assert_eq!(a.gaps[0].kind, GapKind::Human);
    assert!((a.gaps[0].x + a.gaps[0].w - l.plot_x1).abs() < 1e-6, "waits on a human to the end of the picture");
    let s = svg(&l);
    assert!(s.contains("class=\"mark escalation\""));
    assert!(s.contains("class=\"gap human\""));
}

#[test]
fn outcomes_follow_the_attempt_views() {
    assert_eq!(Outcome::of(None, false, None, false), Outcome::Running);
    assert_eq!(Outcome::of(None, true, Some("none"), false), Outcome::Complete);
    assert_eq!(Outcome::of(None, true, Some("none"), true), Outcome::Killed);
    assert_eq!(Outcome::of(None, true, Some("retry"), false), Outcome::Killed);
    assert_eq!(Outcome::of(Some("crash"), true, Some("retry"), false), Outcome::Failed);
    assert_eq!(Outcome::of(Some("deliverable"), true, None, false), Outcome::Failed);
    assert_eq!(Outcome::of(Some("timeout"), true, None, false), Outcome::Timeout);
    assert_eq!(Outcome::of(Some("silent"), true, None, false), Outcome::Timeout);
    assert_eq!(Outcome::of(Some("rate_limited"), true, Some("wait 1m"), false), Outcome::RateLimited);
    let names: std::collections::HashSet<_> = Outcome::ALL.iter().map(|o| o.colour()).collect();
    assert_eq!(names.len(), Outcome::ALL.len(), "every outcome has its own colour");
}

#[test]
fn agent_text_is_escaped_in_svg_and_html() {
    let hostile = "<script>alert(1)</script> & \"quoted\" 'x' \u{1b}[31mred\u{7} \u{202e}rev \u{fffe}";
    let mut runs = fixture();
    runs[0].task = hostile.into();
    runs[0].attempts[0].reason = Some(hostile.into());
    runs[0].events[1].reason = Some(hostile.into());
    let l = layout(&runs, &opts("12:00:40"));
    let s = svg(&l);
    assert!(!s.contains("<script"), "{s}");
    assert!(!s.contains('\u{1b}') && !s.contains('\u{7}') && !s.contains('\u{202e}') && !s.contains('\u{fffe}'));
    assert!(s.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;quoted&quot; &#39;x&#39; \\e[31mred\\x07"));
    assert_eq!(xml_text("<&\">"), "&lt;&amp;&quot;&gt;");
    // The markup survives: well-formed, and the hostile text is text where it was put.
    let doc = roxmltree::Document::parse(&s).expect("well-formed SVG");
    let task = doc.descendants().find(|n| n.attribute("class") == Some("task")).expect("the task's tspan");
    assert!(task.text().unwrap().starts_with("<script>alert(1)</script> & \"quoted\""), "{:?}", task.text());
    assert_eq!(doc.descendants().filter(|n| n.tag_name().name() == "script").count(), 0);
    for (i, _) in s.match_indices('&') {
        let rest = &s[i..];
        assert!(["&lt;", "&gt;", "&amp;", "&quot;", "&#39;"].iter().any(|e| rest.starts_with(e)), "{}", &rest[..10]);
    }
    let page = html(&s, "timeline <x>");
    assert!(page.contains(&s), "the page holds the same SVG");
    assert!(page.contains("<title>timeline &lt;x&gt;</title>"));
    assert!(page.contains("Content-Security-Policy"));
    assert_eq!(page.matches("<script").count(), 0);
}

#[test]
fn shortening_and_durations() {
    assert_eq!(shorten("abcdef", 4), "abc…");
    assert_eq!(shorten("abc", 4), "abc");
    assert_eq!(shorten("a\nb", 8), "a\\nb");
    assert_eq!(duration(850), "850ms");
    assert_eq!(duration(12_340), "12.3s");
    assert_eq!(duration(245_000), "4m05s");
    assert_eq!(duration(7_380_000), "2h03m");
}

#[test]
fn an_empty_run_still_draws() {
    let l = layout(&[], &opts("12:00:00"));
    let s = svg(&l);
    assert!(s.contains("no agents"));
    assert!(s.starts_with("<svg") && s.ends_with("</svg>\n"));
}

#[test]
fn rate_limit_waits_are_their_own_line_and_blockers_are_not_gaps() {
    let runs = vec![run(
        "agent-001-A",
        "limited",
        "12:00:00",
        vec![
            attempt(1, "12:00:00", Some("12:00:05"), Outcome::RateLimited),
            attempt(2, "12:01:05", Some("12:01:30"), Outcome::Complete),
        ],
        vec![
            ev("12:00:00", "started", None),
            Event { blocker: true, ..ev("12:00:02", "waiting", Some("the sandbox is down")) },
            ev("12:00:05", "waiting", Some("429 rate limit; waiting 1m for the reset")),
            ev("12:01:05", "started", None),
            ev("12:01:30", "complete", None),
        ],
        false,
    )];
    let l = layout(&runs, &opts("13:00:00"));
    let r = &l.rows[0];
    assert_eq!(r.bars.iter().map(|b| b.outcome).collect::<Vec<_>>(), [Outcome::RateLimited, Outcome::Complete]);
    assert_eq!(r.bars[0].outcome.colour(), "#9467bd");
    assert_eq!(r.gaps.len(), 1, "{:?}", r.gaps);
    assert_eq!(r.gaps[0].kind, GapKind::Wait);
    assert!(r.gaps[0].title.contains("waiting 1m for the reset") && r.gaps[0].title.contains("1m00s"));
    assert!(
        (r.gaps[0].x - r.bars[0].x - r.bars[0].w).abs() < 1e-6
            && (r.gaps[0].x + r.gaps[0].w - r.bars[1].x).abs() < 1e-6
    );
}
