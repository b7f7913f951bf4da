//! Shared rendering for human output: progress bars, ages, JSON printing.

use std::io::Write;

pub fn print_json(v: &impl serde::Serialize) -> super::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

pub fn bar(progress: Option<f64>, width: usize) -> String {
    match progress {
        None => format!("[{}]  --", " ".repeat(width)),
        Some(p) => {
            let p = p.clamp(0.0, 1.0);
            let filled = (p * width as f64).round() as usize;
            format!("[{}{}] {:>3}%", "#".repeat(filled), ".".repeat(width - filled), (p * 100.0).round() as u32)
        }
    }
}

pub fn age(seconds: Option<f64>) -> String {
    let Some(s) = seconds else { return "-".into() };
    let s = s as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn bars_and_ages() {
        assert_eq!(super::bar(Some(0.5), 10), "[#####.....]  50%");
        assert_eq!(super::bar(None, 4), "[    ]  --");
        assert_eq!(super::age(Some(75.0)), "1m15s");
        assert_eq!(super::age(Some(7300.0)), "2h1m");
    }
}
