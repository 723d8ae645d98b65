//! Following a `cargo test --test qualify` child for certify: its libtest lines become a bar of
//! trials done out of those libtest announced, failures so far and an ETA.
//!
//! The child's stdout and stderr are both piped through this process, so nothing but this module
//! writes to the terminal while the bar draws (a line written past the bar would be torn by its
//! next redraw), and the child, whose stderr is then not a terminal, draws no bars of its own.
//! When the bar draws, passed and ignored trials only move it; every other line (failures,
//! libtest's summary, cargo's and the harness's messages) is printed above it. When it is hidden
//! (a log, CI), every line passes through unchanged.

use std::borrow::Cow;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::Child;

use anyhow::Context;
use modelqa::support::progress;

/// What one line of libtest's pretty output says.
#[derive(Debug, PartialEq)]
enum Line {
    /// `running N tests`: how many trials the run has.
    Running(u64),
    /// `test NAME ... ok`.
    Passed,
    /// `test NAME ... FAILED`.
    Failed,
    /// `test NAME ... ignored`, with or without a reason.
    Ignored,
    /// Anything else.
    Other,
}

fn parse(line: &str) -> Line {
    let line = without_colours(line);
    let line = line.trim_end();
    if let Some(n) =
        line.strip_prefix("running ").and_then(|r| r.strip_suffix(" tests").or(r.strip_suffix(" test")))
    {
        return n.parse().map_or(Line::Other, Line::Running);
    }
    match line.strip_prefix("test ").and_then(|r| r.rsplit_once(" ... ")).map(|(_, outcome)| outcome) {
        Some("ok") => Line::Passed,
        Some("FAILED") => Line::Failed,
        Some(o) if o == "ignored" || o.starts_with("ignored (") => Line::Ignored,
        _ => Line::Other,
    }
}

/// The line without ANSI colour sequences, which libtest writes to a pipe too when a variable
/// such as `CLICOLOR_FORCE` asks for them.
fn without_colours(line: &str) -> Cow<'_, str> {
    if !line.contains('\x1b') {
        return Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters, ended by a letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Trials run so far.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    done: u64,
    failed: u64,
    ignored: u64,
}

impl Tally {
    fn message(&self) -> String {
        match self.ignored {
            0 => format!("trials, {} failed", self.failed),
            i => format!("trials, {} failed, {i} ignored", self.failed),
        }
    }
}

/// Reads the child's stdout and stderr to their end, showing a bar labelled `what`. The caller
/// spawned the child with both piped and waits for it afterwards.
pub fn follow(child: &mut Child, what: String) -> anyhow::Result<()> {
    let stdout = child.stdout.take().context("the harness's stdout is not piped")?;
    let stderr = child.stderr.take().context("the harness's stderr is not piped")?;
    let bar = progress::spinner(what);
    bar.set_message("building and starting the harness");
    std::thread::scope(|s| {
        let err_bar = bar.clone();
        s.spawn(move || {
            for line in lines(stderr) {
                err_bar.suspend(|| {
                    let _ = writeln!(std::io::stderr(), "{line}");
                });
            }
        });
        let mut tally = Tally::default();
        for line in lines(stdout) {
            let parsed = parse(&line);
            match parsed {
                Line::Running(n) => {
                    bar.set_message(Tally::default().message());
                    progress::set_length(&bar, n);
                }
                Line::Passed | Line::Failed | Line::Ignored => {
                    tally.done += 1;
                    tally.failed += u64::from(parsed == Line::Failed);
                    tally.ignored += u64::from(parsed == Line::Ignored);
                    bar.set_message(tally.message());
                    bar.inc(1);
                }
                Line::Other => {}
            }
            if bar.is_hidden() || !matches!(parsed, Line::Passed | Line::Ignored) {
                bar.suspend(|| {
                    // A reader that went away (`| head`) must not stop the child's output being read.
                    let _ = writeln!(std::io::stdout(), "{line}");
                });
            }
        }
    });
    bar.finish_and_clear();
    Ok(())
}

/// A stream's lines, lossily decoded, until it ends or fails.
fn lines(stream: impl Read) -> impl Iterator<Item = String> {
    BufReader::new(stream)
        .split(b'\n')
        .map_while(Result::ok)
        .map(|bytes| String::from_utf8_lossy(&bytes).trim_end_matches('\r').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtest_lines() {
        for (line, expected) in [
            ("running 12 tests", Line::Running(12)),
            ("running 1 test", Line::Running(1)),
            ("test qa-tiny::mvp::qa-tiny-llama::apr::cpu::run::arithmetic_add ... ok", Line::Passed),
            ("test a::b   ... FAILED", Line::Failed),
            ("test a::b ... ignored", Line::Ignored),
            ("test a::b ... ignored (model absent)", Line::Ignored),
            ("test a::b ... \x1b[32mok\x1b[0m", Line::Passed),
            ("test result: FAILED. 3 passed; 1 failed; 0 ignored", Line::Other),
            ("failures:", Line::Other),
            ("", Line::Other),
        ] {
            assert_eq!(parse(line), expected, "{line:?}");
        }
    }
}
