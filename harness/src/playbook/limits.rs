//! Every bound on what a playbook may ask for, in one place: each is checked before the thing
//! it bounds is read, allocated or looped over, and its error names the field and the file.
//! The figures leave real playbooks a wide margin; each says why it is what it is.

/// The largest playbook or template file read. The largest shipped playbook is under 10 KB; a
/// file four hundred times that is a mistake or an attack, and is refused before it is read.
pub(crate) const MAX_FILE_BYTES: u64 = 4 << 20;

/// The deepest nesting of flow collections (`[…]`, `{…}`) a document may have. The YAML scanner
/// is quadratic in flow depth (20,000 levels took 10 s), so depth is counted before it runs;
/// a playbook needs four or five levels.
pub(crate) const MAX_FLOW_DEPTH: usize = 64;

/// The most scenarios one playbook may define, generated cases and a seed playbook's
/// `scenario_count` included. Each scenario is a trial per cell: 100,000 of them already make
/// millions of trials.
pub(crate) const MAX_SCENARIOS: usize = 100_000;

/// The most cases one `generate` or `property` scenario may ask for (`count`).
pub(crate) const MAX_CASES: u32 = 10_000;

/// The most runs a scenario's `repeat` may ask for.
pub(crate) const MAX_REPEATS: u32 = 100;

#[cfg(test)]
mod tests {
    //! Each bound with the hostile case that found it missing: the exact error, and how fast.

    use std::path::Path;
    use std::time::{Duration, Instant};

    use crate::playbook::{PlaybookError, load_all, load_text};

    /// A playbook in our language around `scenarios` (YAML lines), with `extra` top-level keys.
    fn playbook(extra: &str, scenarios: &str) -> String {
        format!(
            "playbook: 1\nfamily: demo\n{extra}tiers:\n  smoke: {{}}\nmodels: [{{id: org/model}}]\nscenarios:\n{scenarios}"
        )
    }

    /// Loads `text` in a scratch root and returns the error, which must come within a second.
    fn refused(text: &str) -> PlaybookError {
        let dir = tempfile::tempdir().expect("a scratch directory");
        let file = dir.path().join("demo.yaml");
        std::fs::write(&file, text).expect("the playbook is written");
        let started = Instant::now();
        let err = load_all(dir.path()).expect_err("the playbook is refused");
        assert!(started.elapsed() < Duration::from_secs(1), "refused only after {:?}", started.elapsed());
        err
    }

    fn says(err: &PlaybookError, words: &str) {
        assert!(err.to_string().contains(words), "expected {words:?} in: {err}");
        assert!(err.to_string().len() < 600, "the message is {} bytes long", err.to_string().len());
    }

    #[test]
    fn a_clean_playbook_loads_within_every_bound() {
        let text = playbook(
            "",
            "  - {name: basic, prompt: \"Hi [0] {x}\", oracles: [garbage]}\n  - {name: sums, generate: {arithmetic: {ops: [\"+\"], operands: [0, 99]}}, count: 50, oracles: [arithmetic]}\n",
        );
        let (pbs, _) = load_text(Path::new("/nowhere/demo.yaml"), Path::new("/nowhere"), &text)
            .expect("the playbook loads");
        assert_eq!(pbs[0].scenarios.len(), 51);
    }

    #[test]
    fn a_seed_scenario_count_of_2_31_is_refused_before_anything_is_allocated() {
        let text = "name: lantern-mini\nmodel: {hf_repo: org/Lantern, formats: [apr]}\ntest_matrix: {modalities: [run], backends: [cpu], scenario_count: 2147483648}\n";
        let err = refused(text);
        says(&err, "`scenario_count` asks for 2147483648 scenarios; a playbook may define at most 100000");
        assert_eq!(err.yaml_path.as_deref(), Some("test_matrix.scenario_count"));
    }

    #[test]
    fn a_generator_count_of_2_32_minus_1_is_refused_at_once() {
        let err = refused(&playbook(
            "",
            "  - {name: sums, generate: {arithmetic: {ops: [\"+\"], operands: [0, 99]}}, count: 4294967295, oracles: [arithmetic]}\n",
        ));
        says(&err, "`count` asks for 4294967295 cases; a scenario may make at most 10000");
        assert_eq!(err.yaml_path.as_deref(), Some("scenarios[0].count"));
    }

    #[test]
    fn generated_cases_past_the_playbook_bound_are_refused() {
        let scenarios: String = (0..11)
            .map(|i| format!("  - {{name: s{i}, generate: {{arithmetic: {{ops: [\"+\", \"*\"], operands: [0, 9999]}}}}, count: 10000, oracles: [arithmetic]}}\n"))
            .collect();
        let started = Instant::now();
        let dir = tempfile::tempdir().expect("a scratch directory");
        std::fs::write(dir.path().join("demo.yaml"), playbook("", &scenarios)).expect("written");
        let err = load_all(dir.path()).expect_err("refused");
        says(&err, "the playbook defines more than 100000 scenarios");
        // 100,000 cases are made before the bound is met; hashing keeps that linear.
        assert!(started.elapsed() < Duration::from_secs(60));
    }

    #[test]
    fn flow_nesting_past_the_bound_is_refused_before_the_scanner_runs() {
        let deep = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
        let err = refused(&playbook(&format!("description: {deep}\n"), ""));
        says(&err, "collections nest more than 64 levels deep");
        assert_eq!(err.location, Some((3, 1)));
        // Brackets inside plain and quoted scalars, and in comments, are text, not nesting.
        let text = playbook(
            "",
            &format!(
                "  - {{name: basic, prompt: \"{0}\", oracles: [garbage]}} # {0}\n  - name: plain\n    prompt: a{0}\n    oracles: [garbage]\n",
                "[".repeat(100)
            ),
        );
        load_text(Path::new("/nowhere/demo.yaml"), Path::new("/nowhere"), &text)
            .expect("brackets in text are not nesting");
    }

    #[test]
    fn a_100000_character_scenario_name_is_refused_in_one_line() {
        let name = "a".repeat(100_000);
        let err = refused(&playbook("", &format!("  - {{name: {name}, prompt: Hi, oracles: [garbage]}}\n")));
        says(&err, "is 100000 characters long; a segment may be at most 128");
    }

    #[test]
    fn a_file_over_the_size_bound_is_refused_unread() {
        let padding = format!("# {}\n", "x".repeat(1 << 20)).repeat(5);
        let err = refused(&format!("{padding}{}", playbook("", "")));
        says(&err, "a playbook may be at most 4194304 bytes");
    }

    /// A playbook in `dir` that extends `template`.
    fn extending(dir: &Path, template: &str) -> PlaybookError {
        let text = playbook(
            &format!("extends: [{template:?}]\n"),
            "  - {name: basic, prompt: Hi, oracles: [garbage]}\n",
        );
        std::fs::write(dir.join("demo.yaml"), text).expect("written");
        let started = Instant::now();
        let err = load_all(dir).expect_err("the template is refused");
        assert!(started.elapsed() < Duration::from_secs(1));
        err
    }

    #[test]
    fn extends_refuses_devices_absolute_paths_and_files_outside_the_root() {
        let outer = tempfile::tempdir().expect("a scratch directory");
        let root = outer.path().join("playbooks");
        std::fs::create_dir(&root).expect("root");
        std::fs::write(outer.path().join("outside.yaml"), "description: outside\n").expect("written");

        let err = extending(&root, "/dev/zero");
        says(&err, "template /dev/zero is an absolute path");
        assert_eq!(err.yaml_path.as_deref(), Some("extends[0]"));
        says(&extending(&root, "/dev/stdin"), "template /dev/stdin is an absolute path");
        says(&extending(&root, "../outside.yaml"), "lies outside the playbook root");
        // A link inside the root to a device is followed, and lands outside.
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink("/dev/zero", root.join("zero.yaml")).expect("a link");
            let err = extending(&root, "zero.yaml");
            says(&err, "lies outside the playbook root");
            std::fs::remove_file(root.join("zero.yaml")).expect("unlinked");
            // A FIFO inside the root is not a regular file, and is never opened.
            let fifo = root.join("templates");
            std::fs::create_dir(&fifo).expect("templates");
            let status = std::process::Command::new("mkfifo").arg(fifo.join("pipe.yaml")).status();
            if status.is_ok_and(|s| s.success()) {
                says(&extending(&root, "templates/pipe.yaml"), "it is not a regular file");
            }
        }
        // The clean case: a template inside the root is read.
        std::fs::create_dir_all(root.join("templates")).expect("templates");
        std::fs::write(root.join("templates/base.yaml"), "description: base\n").expect("written");
        let text = playbook(
            "extends: [templates/base.yaml]\n",
            "  - {name: basic, prompt: Hi, oracles: [garbage]}\n",
        );
        std::fs::write(root.join("demo.yaml"), text).expect("written");
        load_all(&root).expect("a template inside the root is read");
    }
}
