//! Progress bars for long work: conversions here; certify's run, training and the benchmarks in
//! the xtask. One place decides whether a bar draws, so every task behaves alike.
//!
//! A bar draws on stderr only, and only for a person watching: when stderr is not a terminal or
//! `CI` is set, [`bar`] is hidden and draws nothing, so logs hold plain lines and never a
//! carriage-return animation. Callers say what happened in plain lines through [`step`] or
//! [`ProgressBar::suspend`], which print whether the bar draws or not. This module never writes
//! to stdout: libtest owns it in the qualify harness, and the xtask's tables go there.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::io::IsTerminal;
use std::time::Duration;

pub use indicatif::ProgressBar;
use indicatif::ProgressStyle;

/// `what` first, so a narrow terminal still shows which work it is; the message takes the width
/// left (cut, never wrapped: a wrapped bar redraws over the lines above it) and the ETA sits at
/// the right edge.
const BAR: &str = "{spinner} {prefix} [{bar:20}] {pos}/{len} {wide_msg} eta {eta}";
/// Work whose size is not known yet.
const SPINNER: &str = "{spinner} {prefix} {wide_msg} {elapsed}";

/// Whether bars draw in this process: stderr is a terminal and `CI` is unset or empty.
pub fn visible() -> bool {
    draws(std::io::stderr().is_terminal(), std::env::var_os("CI").as_deref())
}

/// The decision behind [`visible`], from its inputs, so it is tested without touching the
/// process's environment.
fn draws(stderr_is_terminal: bool, ci: Option<&OsStr>) -> bool {
    stderr_is_terminal && ci.is_none_or(OsStr::is_empty)
}

/// A bar of `len` steps labelled `what` on stderr, or a hidden one when bars do not draw here
/// (see [`visible`]).
pub fn bar(len: u64, what: impl Into<Cow<'static, str>>) -> ProgressBar {
    let bar = spinner(what);
    set_length(&bar, len);
    bar
}

/// A spinner labelled `what`, for work whose size is not known yet (a build before the trials):
/// [`set_length`] makes it a bar once it is. Hidden as [`bar`] is.
pub fn spinner(what: impl Into<Cow<'static, str>>) -> ProgressBar {
    if !visible() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::no_length().with_style(style(SPINNER)).with_prefix(what);
    // Steps can be minutes apart (a trial, a benchmark row): the spinner shows the work is alive.
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// Gives a [`spinner`] (or a bar) `len` steps, drawn as a bar.
pub fn set_length(bar: &ProgressBar, len: u64) {
    bar.set_style(style(BAR));
    bar.set_length(len);
}

fn style(template: &str) -> ProgressStyle {
    // The templates are constants a test parses; the default style is only a fallback.
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// Says what the work is doing now: the bar's message when it draws, else a plain line on stderr,
/// so a log still says it.
pub fn step(bar: &ProgressBar, what: impl Into<Cow<'static, str>>) {
    if bar.is_hidden() {
        eprintln!("{}", what.into());
    } else {
        bar.set_message(what);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_draw_only_on_a_terminal_outside_ci() {
        let ci = |v: &'static str| Some(OsStr::new(v));
        for (terminal, ci, expected) in [
            (true, None, true),
            // `CI=` in a shell clears it: an empty value counts as unset.
            (true, ci(""), true),
            (true, ci("true"), false),
            (true, ci("1"), false),
            (false, None, false),
            (false, ci("true"), false),
        ] {
            assert_eq!(draws(terminal, ci), expected, "terminal {terminal}, CI {ci:?}");
        }
    }

    #[test]
    fn the_templates_parse() {
        for template in [BAR, SPINNER] {
            assert!(ProgressStyle::with_template(template).is_ok(), "{template}");
        }
    }

    #[test]
    fn steps_of_a_hidden_bar_do_not_set_its_message() {
        let bar = ProgressBar::hidden();
        step(&bar, "converting");
        assert_eq!(bar.message(), "");
    }
}
