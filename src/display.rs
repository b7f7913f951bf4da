//! Text an agent controls, made safe to show a human.
//!
//! Phase, milestone, findings, reasons, task text, names of files: an agent writes them and
//! a human's terminal reads them. Every face renders such text through [`escape`] at the
//! point where it is printed (never where it is stored: the registry and JSON output keep
//! the real text, and JSON escapes controls on its own). Escaped are the characters that
//! act on a terminal or on the shape of the output rather than showing a glyph: C0 controls
//! (newline and tab included, so one value stays one line), DEL, C1 controls (8-bit CSI and
//! OSC), and the Unicode bidirectional overrides, embeddings, isolates and marks that make
//! text display in an order other than the one it has.

//!
//! The faces never print with `println!`/`eprintln!` (the crate denies them): a line for a
//! human goes through [`say!`](crate::say) or [`note!`](crate::note), which escape the whole
//! formatted line, so a value a face forgot to escape still cannot drive the terminal or
//! break the line. [`Shown`] escapes one value where the layout needs its escaped width (a
//! padded table column); [`block`] escapes a multi-line text (a Markdown report) keeping
//! only its own line breaks.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::Write as _;

/// Whether `c` must not reach a terminal as it is.
fn is_unsafe(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}'
        // Bidi marks, embeddings, overrides and isolates; the Arabic letter mark.
        | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{61c}'
        // Line and paragraph separators: some terminals and viewers break lines at them.
        | '\u{2028}' | '\u{2029}'
    )
}

/// `s` with every character that could drive a terminal, or break one value into several
/// lines, written as a visible escape (`\n`, `\t`, `\r`, `\e`, `\u{202e}` ...). Text with
/// nothing to escape is returned as it is, without a copy.
pub fn escape(s: &str) -> Cow<'_, str> {
    let Some(first) = s.find(is_unsafe) else { return Cow::Borrowed(s) };
    let mut out = String::with_capacity(s.len() + 8);
    out.push_str(&s[..first]);
    for c in s[first..].chars() {
        if !is_unsafe(c) {
            out.push(c);
            continue;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{1b}' => out.push_str("\\e"),
            c if (c as u32) < 0x80 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
        }
    }
    Cow::Owned(out)
}

/// [`escape`] of an optional value, `-` when absent.
pub fn escape_or_dash(s: Option<&str>) -> Cow<'_, str> {
    s.map(escape).unwrap_or(Cow::Borrowed("-"))
}

/// An agent-controlled value as a human sees it: [`escape`]d, and padded, aligned and
/// truncated by the format spec like a `str` (`{:24}`, `{:.20}`), on the escaped text.
#[derive(Clone, Copy)]
pub struct Shown<'a>(pub &'a str);

impl std::fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(&escape(self.0))
    }
}

/// `s` as a human sees it (see [`Shown`]).
pub fn shown(s: &str) -> Shown<'_> {
    Shown(s)
}

/// An optional value as a human sees it, `-` when absent.
pub fn shown_or_dash(s: Option<&str>) -> Shown<'_> {
    Shown(s.unwrap_or("-"))
}

/// At most `max` characters of `s` escaped, the last one a `~` when some were cut: a
/// column that holds agent text keeps its width.
pub fn clip(s: &str, max: usize) -> String {
    let e = escape(s);
    if e.chars().count() <= max {
        return e.into_owned();
    }
    e.chars().take(max.saturating_sub(1)).chain(['~']).collect()
}

/// A text of several lines for a human (a report): every character that could drive a
/// terminal escaped, as in [`escape`], except the text's own line breaks.
pub fn block(s: &str) -> Cow<'_, str> {
    if !s.contains(|c| c != '\n' && is_unsafe(c)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for (i, line) in s.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&escape(line));
    }
    Cow::Owned(out)
}

/// Writes one line for a human: the formatted text escaped as a whole (a newline inside a
/// value cannot start a second line), then a newline, in one write.
pub fn line_to(w: &mut impl std::io::Write, args: std::fmt::Arguments<'_>) -> std::io::Result<()> {
    let mut text = match args.as_str() {
        Some(s) => escape(s).into_owned(),
        None => {
            let formatted = args.to_string();
            match escape(&formatted) {
                Cow::Borrowed(_) => formatted,
                Cow::Owned(e) => e,
            }
        }
    };
    text.push('\n');
    w.write_all(text.as_bytes())?;
    w.flush()
}

/// One line on stdout (see [`line_to`]).
pub fn say_line(args: std::fmt::Arguments<'_>) -> std::io::Result<()> {
    line_to(&mut std::io::stdout().lock(), args)
}

/// One line on stderr (see [`line_to`]).
pub fn note_line(args: std::fmt::Arguments<'_>) -> std::io::Result<()> {
    line_to(&mut std::io::stderr().lock(), args)
}

/// A text of several lines on stdout, through [`block`].
pub fn say_block(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(block(text).as_bytes())?;
    out.flush()
}

/// A message of corral's own on stderr that may span lines (an error with a config
/// excerpt): through [`block`], so only its own line breaks survive.
pub fn note_block(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(block(text).as_bytes());
    let _ = err.write_all(b"\n");
}

/// Text written as it is, for output that is not for a terminal to interpret as agent text
/// (JSON, an export, a progress line's own cursor controls).
pub fn raw_out(bytes: &[u8]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)?;
    out.flush()
}

/// As [`raw_out`], on stderr.
pub fn raw_err(bytes: &[u8]) -> std::io::Result<()> {
    let mut err = std::io::stderr().lock();
    err.write_all(bytes)?;
    err.flush()
}

/// On a terminal: erases the line a command keeps redrawing (its progress line).
pub fn clear_progress() {
    let _ = raw_err(b"\r\x1b[K");
}

/// On a terminal: redraws the progress line as `args`, escaped, without a newline.
pub fn progress_line(args: std::fmt::Arguments<'_>) {
    let text = args.to_string();
    let _ = raw_err(format!("\r\x1b[K{}", escape(&text)).as_bytes());
}

/// One line for a human on stdout, formatted like `println!` and escaped as a whole (see
/// [`display`](crate::display)). Evaluates to `std::io::Result<()>`.
#[macro_export]
macro_rules! say {
    ($($t:tt)*) => { $crate::display::say_line(format_args!($($t)*)) };
}

/// As [`say!`], to the writer given first (a face rendered into a buffer, for a test).
#[macro_export]
macro_rules! say_to {
    ($w:expr, $($t:tt)*) => { $crate::display::line_to($w, format_args!($($t)*)) };
}

/// As [`say!`], on stderr.
#[macro_export]
macro_rules! note {
    ($($t:tt)*) => { $crate::display::note_line(format_args!($($t)*)) };
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn shown_pads_and_clips_the_escaped_text() {
        assert_eq!(format!("[{:8}]", super::shown("a\nb")), "[a\\nb    ]");
        assert_eq!(format!("[{:>4}]", super::shown("x")), "[   x]");
        assert_eq!(super::clip("\u{1b}[2Jabcdef", 6), "\\e[2J~");
        assert_eq!(super::clip("short", 6), "short");
        assert_eq!(super::shown_or_dash(None).to_string(), "-");
    }

    #[test]
    fn a_line_stays_one_line() {
        let mut buf = Vec::new();
        let v = "one\ntwo\r\u{1b}]0;T\u{7}";
        super::line_to(&mut buf, format_args!("#{} {v}", 3)).unwrap();
        assert_eq!(String::from_utf8(buf).unwrap(), "#3 one\\ntwo\\r\\e]0;T\\x07\n");
    }

    #[test]
    fn a_block_keeps_only_its_line_breaks() {
        assert_eq!(super::block("# T\n\n- a\u{1b}[2J\r\n"), "# T\n\n- a\\e[2J\\r\n");
        assert!(matches!(super::block("plain\ntext\n"), std::borrow::Cow::Borrowed(_)));
    }

    #[test]
    fn plain_text_is_borrowed() {
        assert!(matches!(escape("build/tests ok: 3 findings"), std::borrow::Cow::Borrowed(_)));
        assert_eq!(escape("über naïve 日本"), "über naïve 日本");
    }

    #[test]
    fn terminal_controls_are_visible() {
        assert_eq!(escape("\u{1b}]0;PWNED\u{7}\u{1b}[2J"), "\\e]0;PWNED\\x07\\e[2J");
        assert_eq!(escape("a\nb\r\tc"), "a\\nb\\r\\tc");
        assert_eq!(escape("\u{9b}31m\u{9d}0;x\u{9c}"), "\\u{9b}31m\\u{9d}0;x\\u{9c}");
        assert_eq!(escape("x\u{7f}\u{0}"), "x\\x7f\\x00");
    }

    #[test]
    fn bidi_controls_are_visible() {
        assert_eq!(escape("abc\u{202e}fed"), "abc\\u{202e}fed");
        assert_eq!(escape("\u{2066}x\u{2069}\u{200f}"), "\\u{2066}x\\u{2069}\\u{200f}");
    }

    #[test]
    fn escaped_text_has_no_unsafe_character() {
        let all: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        assert!(!escape(&all).chars().any(super::is_unsafe));
    }
}
