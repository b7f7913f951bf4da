//! `corral timeline` through the real binary: a run of agents that complete, crash and
//! retry, time out, get escalated and keep running is drawn, the SVG is rendered to PNG by
//! `rsvg-convert`, and the picture is checked: one row per agent, the right bars in the
//! right colours in time order at the times `show` gives, the pixels of the rendered image
//! at those bars in those colours, the backoff and the escalation where they happened, and
//! agent text escaped. The HTML page holds the same SVG.

mod common;
use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const CONFIG: &str = r#"[health]
max_concurrent = 500
breaker_failures = 0
[defaults]
backoff = { initial = "400ms", coefficient = 2.0 }
[[classify]]
exit_codes = [3]
action = "retry"
[[classify]]
failure_type = ["timeout"]
action = "fail"
"#;

const HOSTILE: &str = "<script>alert('x')</script> & \"fails for good\"";

/// One row of the picture as the SVG has it.
#[derive(Debug)]
struct Row {
    agent: String,
    label: String,
    /// (class, attempt, x, y, width, height, fill), in document order.
    bars: Vec<(String, u32, f64, f64, f64, f64, String)>,
    gaps: Vec<(String, String)>,
    marks: Vec<(String, f64)>,
}

struct Picture {
    t0: i64,
    t1: i64,
    x0: f64,
    x1: f64,
    rows: Vec<Row>,
}

fn f(n: roxmltree::Node, a: &str) -> f64 {
    n.attribute(a).unwrap_or_else(|| panic!("{a} missing")).parse().unwrap()
}

fn classes<'a>(n: roxmltree::Node<'a, 'a>) -> Vec<&'a str> {
    n.attribute("class").unwrap_or("").split(' ').collect()
}

/// The classes of a row's bars, in order.
fn kinds(r: &Row) -> Vec<&str> {
    r.bars.iter().map(|b| b.0.as_str()).collect()
}

fn parse(svg: &str) -> Picture {
    let doc = roxmltree::Document::parse(svg).unwrap_or_else(|e| panic!("not well-formed XML ({e}):\n{svg}"));
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "svg");
    let rows = root
        .descendants()
        .filter(|n| classes(*n) == ["row"])
        .map(|g| {
            let label = g.descendants().find(|n| classes(*n) == ["label"]).expect("a label");
            let label: String = label
                .children()
                .filter(|c| c.tag_name().name() == "tspan")
                .map(|c| c.text().unwrap_or(""))
                .collect::<Vec<_>>()
                .join(" ");
            let bars = g
                .descendants()
                .filter(|n| classes(*n).first() == Some(&"bar"))
                .map(|n| {
                    (
                        classes(n)[1].to_string(),
                        n.attribute("data-attempt").unwrap().parse().unwrap(),
                        f(n, "x"),
                        f(n, "y"),
                        f(n, "width"),
                        f(n, "height"),
                        n.attribute("fill").unwrap().to_string(),
                    )
                })
                .collect();
            let gaps = g
                .descendants()
                .filter(|n| classes(*n).first() == Some(&"gap"))
                .map(|n| {
                    let title = n.children().find(|c| c.tag_name().name() == "title").and_then(|t| t.text());
                    (classes(n)[1].to_string(), title.unwrap_or("").to_string())
                })
                .collect();
            let marks = g
                .descendants()
                .filter(|n| classes(*n).first() == Some(&"mark"))
                .map(|n| {
                    let x = n.attribute("points").unwrap().split([' ', ',']).next().unwrap().parse().unwrap();
                    (classes(n)[1].to_string(), x)
                })
                .collect();
            Row { agent: g.attribute("data-agent").unwrap().to_string(), label, bars, gaps, marks }
        })
        .collect();
    Picture {
        t0: root.attribute("data-t0").unwrap().parse().unwrap(),
        t1: root.attribute("data-t1").unwrap().parse().unwrap(),
        x0: f(root, "data-plot-x0"),
        x1: f(root, "data-plot-x1"),
        rows,
    }
}

/// The image `rsvg-convert` makes of `svg`: width, height, RGBA pixels.
fn render_png(svg: &Path) -> (u32, u32, Vec<u8>) {
    let png = svg.with_extension("png");
    let out = Command::new("rsvg-convert")
        .arg(svg)
        .arg("-o")
        .arg(&png)
        .output()
        .expect("rsvg-convert (Debian package librsvg2-bin; scripts/test.sh installs it)");
    assert!(out.status.success(), "rsvg-convert failed: {}", String::from_utf8_lossy(&out.stderr));
    let mut decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    let channels = info.color_type.samples();
    let mut rgba = Vec::with_capacity((info.width * info.height * 4) as usize);
    for y in 0..info.height as usize {
        let line = &buf[y * info.line_size..][..info.width as usize * channels];
        for px in line.chunks(channels) {
            match channels {
                4 => rgba.extend_from_slice(px),
                3 => rgba.extend_from_slice(&[px[0], px[1], px[2], 255]),
                n => panic!("unexpected {n} channels"),
            }
        }
    }
    (info.width, info.height, rgba)
}

fn pixel(img: &(u32, u32, Vec<u8>), x: f64, y: f64) -> String {
    let (w, h, px) = img;
    let (x, y) = (x.floor() as u32, y.floor() as u32);
    assert!(x < *w && y < *h, "({x}, {y}) outside the {w}x{h} image");
    let i = ((y * w + x) * 4) as usize;
    assert_eq!(px[i + 3], 255, "opaque at ({x}, {y})");
    format!("#{:02x}{:02x}{:02x}", px[i], px[i + 1], px[i + 2])
}

fn millis(t: &Value) -> i64 {
    t.as_str().unwrap().parse::<jiff::Timestamp>().unwrap().as_millisecond()
}

/// Every bar of the picture has its fill colour in the rendered image, at its middle.
fn check_pixels(pic: &Picture, img: &(u32, u32, Vec<u8>)) {
    for r in &pic.rows {
        for (class, n, x, y, w, h, fill) in &r.bars {
            assert_eq!(pixel(img, x + w / 2.0, y + h / 2.0), *fill, "{} attempt {n} ({class})", r.agent);
        }
    }
}

#[test]
fn timeline_draws_each_agents_attempts_waits_and_escalations() {
    let ws = Ws::with_config(Some(CONFIG));
    let spawn = |role: &str, task: &str, extra: &[&str], script: &str| {
        let mut args = vec!["spawn", "--role", role, "--task", task];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "sh", "-c", script]);
        ws.ok(&args).trim().to_string()
    };
    let done = spawn("DONE", "finishes at once", &[], "sleep 0.5");
    let flaky = spawn(
        "FLAKY",
        "crashes once, then completes",
        &[],
        "if [ \"$CORRAL_ATTEMPT\" = 1 ]; then sleep 0.4; exit 3; fi; sleep 0.5",
    );
    let slow = spawn("SLOW", "hangs past its timeout", &["--timeout", "1s"], "sleep 30");
    let stuck = spawn("STUCK", HOSTILE, &[], "sleep 0.4; exit 2");
    let live = spawn("LIVE", "still running", &[], "sleep 60");
    let long = Duration::from_secs(30);
    ws.wait_state(&done, &["complete"], long);
    ws.wait_state(&flaky, &["complete"], long);
    ws.wait_state(&slow, &["timed_out"], long);
    ws.wait_state(&stuck, &["escalated"], long);
    ws.wait_state(&live, &["running"], long);

    let dir = ws.path();
    let svg1 = dir.join("running.svg");
    let o = ws.run(&["timeline", "--out", svg1.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let said = String::from_utf8_lossy(&o.stderr);
    assert!(said.contains("timeline of 5 agents written to") && said.contains("running.svg"), "{said}");
    let text = std::fs::read_to_string(&svg1).unwrap();
    let pic = parse(&text);

    // One row per agent, in spawn order, each labelled with its id and task.
    let ids: Vec<&str> = pic.rows.iter().map(|r| r.agent.as_str()).collect();
    assert_eq!(ids, [&done, &flaky, &slow, &stuck, &live]);
    assert!(pic.rows[1].label.contains(&flaky) && pic.rows[1].label.contains("crashes once"), "{}", pic.rows[1].label);
    assert_eq!(kinds(&pic.rows[0]), ["complete"]);
    assert_eq!(kinds(&pic.rows[1]), ["failed", "complete"]);
    assert_eq!(kinds(&pic.rows[2]), ["timeout"]);
    assert_eq!(kinds(&pic.rows[3]), ["failed"]);
    assert_eq!(kinds(&pic.rows[4]), ["running"]);
    let colour = |r: usize, i: usize| pic.rows[r].bars[i].6.as_str();
    assert_eq!(
        [colour(0, 0), colour(1, 0), colour(1, 1), colour(2, 0), colour(3, 0), colour(4, 0)],
        ["#2ca02c", "#d62728", "#2ca02c", "#ff7f0e", "#d62728", "#1f77b4"]
    );

    // Bars stand at the times `show` gives, in the order the attempts ran.
    let scale = (pic.x1 - pic.x0) / (pic.t1 - pic.t0) as f64;
    let x_of = |ms: i64| pic.x0 + (ms - pic.t0) as f64 * scale;
    for r in &pic.rows {
        let show = ws.show(&r.agent);
        let attempts = show["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), r.bars.len(), "{}", r.agent);
        for (a, b) in attempts.iter().zip(&r.bars) {
            assert_eq!(a["attempt"].as_u64().unwrap() as u32, b.1);
            assert!((x_of(millis(&a["startedAt"])) - b.2).abs() < 0.2, "{}: bar at {} for {a}", r.agent, b.2);
            if !a["endedAt"].is_null() {
                let w = x_of(millis(&a["endedAt"])) - b.2;
                assert!((w.max(2.0) - b.4).abs() < 0.2, "{}: width {} for {a}", r.agent, b.4);
            }
        }
        assert!(r.bars.windows(2).all(|w| w[0].2 + w[0].4 <= w[1].2), "{}: bars in time order", r.agent);
    }
    // The running attempt reaches to the right edge, which is now.
    let run = &pic.rows[4].bars[0];
    assert!((run.2 + run.4 - pic.x1).abs() < 0.2, "{run:?} ends at {}", pic.x1);
    // The backoff between the crash and the retry is drawn with its reason.
    let backoff: Vec<_> = pic.rows[1].gaps.iter().filter(|g| g.0 == "backoff").collect();
    assert_eq!(backoff.len(), 1, "{:?}", pic.rows[1].gaps);
    assert!(backoff[0].1.contains("retry 1 of") && backoff[0].1.contains("exited with code 3"), "{}", backoff[0].1);
    // The escalation is marked where the attempt ended, and the wait on a human follows it.
    let stuck_row = &pic.rows[3];
    assert_eq!(stuck_row.marks.iter().map(|m| m.0.as_str()).collect::<Vec<_>>(), ["escalation"]);
    let opened = ws
        .ok(&["events", "--agent", &stuck])
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|e| e["kind"] == "escalation_opened")
        .expect("an escalation was opened");
    let at = x_of(millis(&opened["at"]));
    assert!((stuck_row.marks[0].1 - at).abs() < 0.2, "mark at {} for the escalation at {at}", stuck_row.marks[0].1);
    let end = stuck_row.bars[0].2 + stuck_row.bars[0].4;
    assert!(stuck_row.marks[0].1 >= end - 0.2, "the escalation follows the attempt's end at {end}");
    assert!(stuck_row.gaps.iter().any(|g| g.0 == "human" && g.1.contains("needs a human")), "{:?}", stuck_row.gaps);
    // The hostile task is text, not markup.
    assert!(!text.contains("<script"), "{text}");
    assert!(text.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;fails"), "{text}");
    assert!(stuck_row.label.contains("<script>alert("), "{}", stuck_row.label);

    // The rendered image has those colours where the bars are.
    let img = render_png(&svg1);
    assert!(img.0 >= 1400);
    check_pixels(&pic, &img);
    // Between the flaky agent's bars, on the backoff line: no bar colour.
    let (a, b) = (&pic.rows[1].bars[0], &pic.rows[1].bars[1]);
    let mid = (a.2 + a.4 + b.2) / 2.0;
    assert!(!["#2ca02c", "#d62728"].contains(&pixel(&img, mid, a.3 + a.5 / 2.0).as_str()));

    // Killed, the live agent's bar turns grey; with everything finished the picture no longer
    // depends on the moment: stdout, the .svg and the .html page hold the same SVG.
    ws.ok(&["kill", &live, "--grace", "1s"]);
    ws.wait_state(&live, &["killed"], long);
    let svg2 = dir.join("done.svg");
    let html = dir.join("done.html");
    ws.ok(&["timeline", "--out", svg2.to_str().unwrap()]);
    ws.ok(&["timeline", "--out", html.to_str().unwrap()]);
    let stdout = ws.ok(&["timeline"]);
    let text2 = std::fs::read_to_string(&svg2).unwrap();
    assert_eq!(stdout, text2, "stdout has the SVG");
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.starts_with("<!DOCTYPE html>") && page.contains(&text2), "the page holds the same SVG");
    assert!(!page.contains("<script") && !page.contains("src=") && !page.contains("href="), "{page}");
    let pic2 = parse(&text2);
    assert_eq!(kinds(&pic2.rows[4]), ["killed"]);
    assert_eq!(pic2.rows[4].bars[0].6, "#7f7f7f");
    check_pixels(&pic2, &render_png(&svg2));

    // --json: the same rows as data; the flaky agent's two attempts, the first a crash with
    // its reason, then complete; the backoff between them among its events.
    let j = ws.json(&["timeline", "--json"]);
    let rows = j.as_array().unwrap();
    assert_eq!(rows.len(), pic2.rows.len(), "{j}");
    let fj = rows.iter().find(|r| r["agentId"] == flaky.as_str()).unwrap();
    let outcomes: Vec<&str> =
        fj["attempts"].as_array().unwrap().iter().map(|a| a["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes.last(), Some(&"complete"), "{fj}");
    assert_eq!(outcomes.len(), 2, "{fj}");
    assert!(fj["attempts"][0]["reason"].is_string() && fj["attempts"][0]["endedAt"].is_string(), "{fj}");
    assert!(fj["events"].as_array().unwrap().iter().any(|e| e["kind"] == "retrying"), "{fj}");

    // Filters: ids (a unique prefix of one) and roles.
    let one = parse(&ws.ok(&["timeline", &flaky[..9]]));
    assert_eq!(one.rows.iter().map(|r| r.agent.as_str()).collect::<Vec<_>>(), [&flaky]);
    let role = parse(&ws.ok(&["timeline", "--role", "SLOW"]));
    assert_eq!(role.rows.iter().map(|r| r.agent.as_str()).collect::<Vec<_>>(), [&slow]);
}

#[test]
fn timeline_refuses_what_it_cannot_write() {
    let ws = Ws::new();
    ws.spawn("R", &["true"]);
    let o = ws.run(&["timeline", "--out", "picture.png"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("picture.png") && err.contains(".svg or .html"), "{err}");
    let o = ws.run(&["timeline", "--format", "pdf"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("use svg or html"));
    let o = ws.run(&["timeline", "--width", "10"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--width 10"));
    // --format wins over the extension.
    let page = ws.ok(&["timeline", "--format", "html"]);
    assert!(page.starts_with("<!DOCTYPE html>") && page.contains("<svg"));
    // Nowhere to read from: no workspace, nothing created.
    let empty = tempfile::tempdir().unwrap();
    let o =
        Command::new(bin()).arg("timeline").current_dir(empty.path()).env_remove("CORRAL_DATA_DIR").output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(std::fs::read_dir(empty.path()).unwrap().next().is_none());
}
