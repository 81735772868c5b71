//! Text and durations as people read them: terminal-safe text (stored text
//! comes from whoever wrote the commits, and error text from whatever
//! answered), display widths for aligned columns, and durations for
//! summaries, progress and log lines.
//!
//! Every character that would act on a terminal instead of being shown — C0
//! and C1 controls, DEL (ESC starts the sequences that clear the screen or
//! retitle the window), and the bidirectional embedding, override and
//! isolate characters U+202A–U+202E and U+2066–U+2069 that reorder what is
//! shown ("Trojan Source") — is written as its Rust escape, `\u{1b}`.

use std::borrow::Cow;
use std::time::Duration;

/// `850 ms`, `12.3 s`, `4m05s`, `1h00m`: short, and exact enough for a
/// person deciding whether to wait.
pub fn duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 1.0 {
        format!("{:.0} ms", s * 1000.0)
    } else if s < 60.0 {
        format!("{s:.1} s")
    } else if s < 3600.0 {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!(
            "{}h{:02}m",
            (s / 3600.0) as u64,
            ((s % 3600.0) / 60.0) as u64
        )
    }
}

/// `512 B`, `300.0 MiB`, `1.5 GiB`: a size in binary units.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// Columns a character takes on a terminal (East Asian wide characters
/// and emoji 2, combining marks and zero-width characters 0; controls,
/// which cells never contain, 0).
fn char_width(c: char) -> usize {
    unicode_width::UnicodeWidthChar::width(c).unwrap_or(0)
}

/// Columns a string takes on a terminal.
pub fn display_width(s: &str) -> usize {
    s.chars().map(char_width).sum()
}

/// `s` padded with spaces on the right to `columns` terminal columns.
pub fn pad(s: &str, columns: usize) -> String {
    let mut out = s.to_owned();
    out.extend(std::iter::repeat_n(
        ' ',
        columns.saturating_sub(display_width(s)),
    ));
    out
}

/// `s` cut to at most `width` columns, ending in `…` when cut.
pub fn truncate(s: &str, width: usize) -> String {
    if display_width(s) <= width {
        return s.to_owned();
    }
    if width == 0 {
        return String::new();
    }
    let mut out = String::new();
    let mut used = 0;
    for c in s.chars() {
        let w = char_width(c);
        if used + w > width - 1 {
            break;
        }
        used += w;
        out.push(c);
    }
    out.push('…');
    out
}

/// Whether `c` would act on a terminal rather than be shown: a control
/// character (C0, DEL, C1) or a bidirectional embedding, override or
/// isolate character (see the module documentation).
fn acts_on_terminal(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` safe to print to a terminal on one line: every character that would
/// act on the terminal is written as its Rust escape (ESC as `\u{1b}`),
/// except tabs, which only move the cursor forward. Borrowed when nothing
/// needed escaping, so ordinary text prints byte for byte as stored.
///
/// A backslash is not escaped: `\u{1b}` in the output may also be those six
/// characters in the data; `json` output tells them apart.
pub fn printable(s: &str) -> Cow<'_, str> {
    let escape = |c: char| c != '\t' && acts_on_terminal(c);
    if !s.chars().any(escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if escape(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_in_binary_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1024), "1.0 KiB");
        assert_eq!(bytes(256 << 20), "256.0 MiB");
        assert_eq!(bytes(3 << 29), "1.5 GiB");
        assert_eq!(bytes(u64::MAX), "16384.0 PiB");
    }

    #[test]
    fn durations_read_in_the_largest_sensible_unit() {
        assert_eq!(duration(Duration::from_millis(850)), "850 ms");
        assert_eq!(duration(Duration::from_millis(12_340)), "12.3 s");
        assert_eq!(duration(Duration::from_secs(245)), "4m05s");
        assert_eq!(duration(Duration::from_secs(3600)), "1h00m");
        assert_eq!(duration(Duration::from_secs(1_000_000_000)), "277777h46m");
    }

    #[test]
    fn truncation_counts_wide_characters() {
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(display_width("支付"), 4);
        assert_eq!(truncate("支付模块", 5), "支付…");
        // Hangul, emoji and a combining accent (e + U+0301 is one column).
        assert_eq!(display_width("김민준"), 6);
        assert_eq!(display_width("✨🎉"), 4);
        assert_eq!(display_width("Rene\u{301}e"), 5);
        assert_eq!(pad("김민준", 8), "김민준  ");
        assert_eq!(pad("Søren", 8), "Søren   ");
        assert_eq!(pad("too long", 3), "too long");
    }

    #[test]
    fn ordinary_text_is_printed_as_stored() {
        for s in [
            "Add Grüße 👋",
            "详情见工单。",
            "\tindented",
            "a \\u{1b} literal",
            "",
        ] {
            assert!(matches!(printable(s), Cow::Borrowed(t) if t == s), "{s:?}");
        }
    }

    #[test]
    fn terminal_controls_are_escaped_visibly() {
        assert_eq!(
            printable("\u{1b}[2J\u{1b}]0;pwned\u{7}\0\r\n\u{7f}\u{9b}"),
            r"\u{1b}[2J\u{1b}]0;pwned\u{7}\u{0}\u{d}\u{a}\u{7f}\u{9b}"
        );
        assert_eq!(
            printable("if \u{202e}admin\u{2066}x\u{2069}\u{202a}"),
            r"if \u{202e}admin\u{2066}x\u{2069}\u{202a}"
        );
        // Marks that only hint the direction of right-to-left text stay.
        assert_eq!(printable("שלום\u{200f}"), "שלום\u{200f}");
    }
}
