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

use std::borrow::Cow;
use std::fmt::Write as _;

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

#[cfg(test)]
mod tests {
    use super::escape;

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
