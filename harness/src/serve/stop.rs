//! Stop sequences over text that arrives in pieces: what may be sent now, and where the answer
//! ends. A stop sequence can span pieces ("\n" then "\n"), so the tail of the text that could
//! still become one is held back until the next piece settles it.

/// Cuts a stream of text before the first of its stop sequences.
#[derive(Debug)]
pub(crate) struct StopScanner {
    stops: Vec<String>,
    held: String,
    found: bool,
}

impl StopScanner {
    pub(crate) fn new(stops: Vec<String>) -> Self {
        // An empty sequence would match before anything; requests refuse it, and it is dropped
        // here as well so the scanner never stops on nothing.
        let stops = stops.into_iter().filter(|s| !s.is_empty()).collect();
        StopScanner { stops, held: String::new(), found: false }
    }

    /// Whether a stop sequence has been seen (nothing more is to be sent).
    pub(crate) fn found(&self) -> bool {
        self.found
    }

    /// Takes the next piece; returns the text that is now certain to be part of the answer.
    pub(crate) fn push(&mut self, piece: &str) -> String {
        if self.found {
            return String::new();
        }
        self.held.push_str(piece);
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            self.found = true;
            self.held.truncate(at);
            return std::mem::take(&mut self.held);
        }
        let keep = self.undecided_tail();
        let rest = self.held.split_off(self.held.len() - keep);
        std::mem::replace(&mut self.held, rest)
    }

    /// At the end of generation: the text held back, which no stop sequence completed.
    pub(crate) fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// The length of the longest tail of `held` that begins some stop sequence without
    /// completing it: any match still to come starts inside that tail.
    fn undecided_tail(&self) -> usize {
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        let earliest = self.held.len().saturating_sub(longest.saturating_sub(1));
        self.held
            .char_indices()
            .map(|(i, _)| i)
            .filter(|&i| i >= earliest)
            .find(|&i| {
                let tail = &self.held[i..];
                self.stops.iter().any(|s| s.len() > tail.len() && s.starts_with(tail))
            })
            .map_or(0, |i| self.held.len() - i)
    }
}

/// `text` cut before the first of `stops`, and whether one was there.
pub(crate) fn truncate(text: &str, stops: &[String]) -> (String, bool) {
    let mut scanner = StopScanner::new(stops.to_vec());
    let mut out = scanner.push(text);
    out.push_str(&scanner.finish());
    (out, scanner.found())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stops(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    /// Feeds `pieces` through a scanner; returns what it sent and whether it stopped.
    fn check(stop: &[&str], pieces: &[&str], sent: &str, found: bool) {
        let mut scanner = StopScanner::new(stops(stop));
        let mut out = String::new();
        for p in pieces {
            out.push_str(&scanner.push(p));
        }
        if !scanner.found() {
            out.push_str(&scanner.finish());
        }
        assert_eq!((out.as_str(), scanner.found()), (sent, found), "{stop:?} over {pieces:?}");
        // Whole or in pieces, the answer is the same.
        assert_eq!(truncate(&pieces.concat(), &stops(stop)), (sent.to_string(), found), "whole");
    }

    #[test]
    fn stop_sequences_cut_the_answer_whole_or_in_pieces() {
        check(&[], &["red ", "blue"], "red blue", false);
        check(&["x"], &["red ", "blue"], "red blue", false);
        check(&["blue"], &["red ", "blue"], "red ", true);
        check(&["\n\n"], &["one\n", "\ntwo"], "one", true);
        check(&["END"], &["a E", "N", "D b"], "a ", true);
        check(&["END"], &["a E", "N", "x"], "a ENx", false);
        check(&["END"], &["a EN"], "a EN", false);
        check(&["b", "a"], &["xab"], "x", true);
        check(&["abc", "bcd"], &["xab", "cd"], "x", true);
        check(&["ab", "bcd"], &["xbc", "d"], "x", true);
        check(&["é!"], &["café", "!"], "caf", true);
        check(&["!"], &["日本", "語!"], "日本語", true);
        check(&["stop"], &["stop"], "", true);
    }

    #[test]
    fn nothing_that_could_start_a_stop_sequence_is_sent_early() {
        let mut scanner = StopScanner::new(stops(&["\n\n"]));
        assert_eq!(scanner.push("one\n"), "one");
        assert_eq!(scanner.push("x"), "\nx");
        let mut scanner = StopScanner::new(stops(&["END"]));
        assert_eq!(scanner.push("aEN"), "a");
        assert_eq!(scanner.push("D"), "");
        assert!(scanner.found());
        assert_eq!(scanner.push("more"), "", "nothing after the stop");
    }
}
