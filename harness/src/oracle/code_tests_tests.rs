//! Planted defects for the `code_tests` oracle: right code passes, and wrong, broken, endless,
//! greedy and nosy code fails for the reason it should. Tests that need `python3` or `rustc`
//! say so and return where it is missing.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use super::*;
use crate::oracle::spec::{CodeTestsSpec, OracleSpec};
use crate::oracle::{Oracle, OracleError};

fn oracle(language: Language, tests: &[&str]) -> CodeTests {
    CodeTests { language, tests: tests.iter().map(|t| t.to_string()).collect(), limits: Limits::default() }
}

/// Whether the toolchain is here; where it is not, the test says so and passes vacuously.
fn here(language: Language) -> bool {
    match unavailable(language) {
        None => true,
        Some(why) => {
            eprintln!("skipped: {why}");
            false
        }
    }
}

#[track_caller]
fn passes(o: &CodeTests, question: &str, output: &str) -> String {
    match o.judge(question, output) {
        Verdict::Corroborated(why) => why,
        Verdict::Falsified(why) => panic!("{question:?} + {output:?} should pass: {why}"),
    }
}

#[track_caller]
fn fails(o: &CodeTests, question: &str, output: &str) -> String {
    match o.judge(question, output) {
        Verdict::Falsified(why) => why,
        Verdict::Corroborated(why) => panic!("{question:?} + {output:?} should fail, passed: {why}"),
    }
}

const FIB: &str = "def fibonacci(n):";
const FIB_TESTS: [&str; 3] =
    ["assert fibonacci(0) == 0", "assert fibonacci(1) == 1", "assert fibonacci(10) == 55"];
const QA_TINY_FIB: &str = "    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)";
const ADD: &str = "fn add(a: i32, b: i32) -> i32 {";
const ADD_TESTS: [&str; 3] =
    ["assert_eq!(add(2, 3), 5);", "assert_eq!(add(-4, 4), 0);", "assert_eq!(add(40, 2), 42);"];

#[test]
fn python_right_code_passes_and_wrong_code_fails_naming_the_assertion() {
    if !here(Language::Python) {
        return;
    }
    let o = oracle(Language::Python, &FIB_TESTS);
    assert_eq!(passes(&o, FIB, QA_TINY_FIB), "the code passes all 3 tests");
    assert_eq!(
        passes(&o, FIB, "\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a"),
        "the code passes all 3 tests"
    );
    // A fenced block stands alone.
    passes(
        &o,
        "Write fibonacci in Python.",
        "Here:\n```python\ndef fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n```",
    );

    // Valid, and wrong.
    let why = fails(&o, FIB, "    return 0");
    assert_eq!(why, "test 2 of 3 failed: `assert fibonacci(1) == 1`: fibonacci(1) is 0, expected 1");
    let why = fails(&o, FIB, "    return n");
    assert!(
        why.starts_with("test 3 of 3 failed: `assert fibonacci(10) == 55`: fibonacci(10) is 10"),
        "{why}"
    );
    // Not valid.
    let why = fails(&o, FIB, "    return fibonacci(n - 1) +");
    assert!(why.starts_with("the code does not compile: line 2: SyntaxError"), "{why}");
    // Raises in a test, at load, or leaves before the tests.
    let why = fails(&o, FIB, "    return fibonacci(n - 1) + fibonacci(n - 2)");
    assert!(why.starts_with("test 1 of 3 failed") && why.contains("RecursionError"), "{why}");
    let why = fails(&o, FIB, "    return n\nundefined_name()");
    assert_eq!(
        why,
        "the code raised NameError: name 'undefined_name' is not defined at line 3, before any test ran"
    );
    let why = fails(&o, FIB, "    return n\nimport os\nos._exit(0)");
    assert!(why.starts_with("the tests exited with code 0 without a result"), "{why}");
    let why = fails(&o, FIB, "    return n\nimport sys\nsys.exit(0)");
    assert!(why.contains("SystemExit"), "{why}");
    // The model's answer is the function's body; the question alone defines nothing useful.
    let why = fails(&oracle(Language::Python, &["assert square(3) == 9"]), FIB, QA_TINY_FIB);
    assert!(why.contains("NameError: name 'square' is not defined"), "{why}");
}

#[test]
fn python_endless_code_is_killed_at_the_limit() {
    if !here(Language::Python) {
        return;
    }
    let mut o = oracle(Language::Python, &FIB_TESTS);
    o.limits.run = Duration::from_secs(1);
    let started = Instant::now();
    // A child it started is in the group and dies with it.
    let why = fails(
        &o,
        FIB,
        "    import subprocess\n    subprocess.Popen(['sleep', '60'])\n    while True:\n        pass",
    );
    assert_eq!(why, "the tests did not finish in 1 s");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
}

#[test]
fn python_memory_bombs_and_floods_are_stopped() {
    if !here(Language::Python) {
        return;
    }
    let o = oracle(Language::Python, &FIB_TESTS);
    let why = fails(&o, FIB, "    x = bytearray(8 * 1024 ** 3)\n    return n");
    assert!(why.contains("MemoryError") && why.contains("the limit is 512 MiB"), "{why}");
    let why = fails(&o, FIB, "    print('x' * 1000000)\n    return n");
    assert_eq!(why, "the tests wrote more than 64 KiB of output");
}

#[test]
fn python_code_sees_no_secrets_and_no_network() {
    if !here(Language::Python) {
        return;
    }
    assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some(), "cargo gives tests a variable to hide");
    let o = oracle(
        Language::Python,
        &[
            "import os",
            "assert os.environ.get('CARGO_MANIFEST_DIR') is None",
            "assert set(os.environ) <= {'PATH', 'HOME', 'TMPDIR', 'LC_CTYPE'}, sorted(os.environ)",
            "assert os.environ['HOME'] == os.getcwd()",
        ],
    );
    passes(&o, "def f():", "    return 1");

    let listener = TcpListener::bind("127.0.0.1:0").expect("a local port");
    listener.set_nonblocking(true).expect("non-blocking");
    let port = listener.local_addr().expect("an address").port();
    let o = oracle(Language::Python, &["assert reach() == 'connected'"]);
    let reach = format!(
        "def reach():\n    import socket\n    socket.create_connection(('127.0.0.1', {port}), timeout=2).close()\n    return 'connected'"
    );
    match crate::process::network_isolation() {
        Ok(()) => {
            let why = fails(&o, "", &reach);
            assert!(why.contains("OSError") || why.contains("Error"), "{why}");
            assert!(listener.accept().is_err(), "nothing connected");
        }
        Err(why) => eprintln!("network isolation not checked: {why}"),
    }
}

#[test]
fn rust_right_code_passes_and_wrong_code_fails_naming_the_assertion() {
    if !here(Language::Rust) {
        return;
    }
    let o = oracle(Language::Rust, &ADD_TESTS);
    assert_eq!(passes(&o, ADD, "    a + b\n}"), "the code passes all 3 tests");
    // qa-tiny's answer in `chat`: it parses, as `code_syntax` found, and it is not a function.
    let why = fails(&o, ADD, "}");
    assert!(why.starts_with("the code does not compile: line 1, column "), "{why}");
    assert!(why.contains("error[E0308]: mismatched types"), "{why}");
    let why = fails(&o, ADD, "    a - b\n}");
    assert!(
        why.starts_with("test 1 of 3 failed: `assert_eq!(add(2, 3), 5);`: assertion `left == right` failed"),
        "{why}"
    );
    assert!(why.contains("left: -1") && why.contains("right: 5"), "{why}");
    let why = fails(&o, ADD, "    a + b\n}\nfn main() { undefined(); }");
    assert!(why.contains("error[E0425]"), "{why}");
    // A main of the answer's own does not stand in for the tests.
    passes(&o, ADD, "    a + b\n}\nfn main() { std::process::exit(1) }");
}

#[test]
fn rust_endless_greedy_and_nosy_code_fails() {
    if !here(Language::Rust) {
        return;
    }
    let mut o = oracle(Language::Rust, &ADD_TESTS);
    o.limits.run = Duration::from_secs(1);
    let started = Instant::now();
    assert_eq!(fails(&o, ADD, "    loop {}\n}"), "the tests did not finish in 1 s");
    assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());

    let why = fails(&o, ADD, "    let v = vec![1u8; 8 << 30];\n    v.len() as i32\n}");
    assert!(why.contains("ran out of memory (the limit is 512 MiB)"), "{why}");

    assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some(), "cargo gives tests a variable to hide");
    let o = oracle(Language::Rust, &["assert_eq!(secret(), None);"]);
    passes(&o, "fn secret() -> Option<String> {", "    std::env::var(\"CARGO_MANIFEST_DIR\").ok()\n}");
    if crate::process::network_isolation().is_ok() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a local port");
        let port = listener.local_addr().expect("an address").port();
        let o = oracle(Language::Rust, &["assert!(reach());"]);
        let why = fails(
            &o,
            "fn reach() -> bool {",
            &format!("    std::net::TcpStream::connect((\"127.0.0.1\", {port})).is_ok()\n}}"),
        );
        assert!(why.contains("assertion failed: reach()"), "{why}");
    }
}

#[test]
fn tests_must_exist_and_parse_when_the_playbook_loads() {
    let spec = |language, tests: &[&str]| {
        Oracle::from_spec(&OracleSpec::CodeTests(CodeTestsSpec {
            language,
            tests: tests.iter().map(|t| t.to_string()).collect(),
        }))
    };
    assert!(matches!(spec(Language::Python, &[]), Err(OracleError::NoTests)));
    let e = spec(Language::Python, &["assert f(1) == 1", "assert f(2) =="]).unwrap_err().to_string();
    assert!(e.starts_with("test 2 of `code_tests` is not valid Python: line 1"), "{e}");
    let e = spec(Language::Rust, &["assert_eq!(add(1, 1), 2)", "let x = ;"]).unwrap_err().to_string();
    assert!(e.starts_with("test 2 of `code_tests` is not valid Rust: line 1"), "{e}");
    assert!(spec(Language::Rust, &["let x = add(1, 1);\nassert_eq!(x, 2);"]).is_ok());
}

#[test]
fn libtest_reports_are_read_for_the_first_failure() {
    let report = "running 2 tests\ntest __modelqa_tests::case_1 ... ok\ntest __modelqa_tests::case_2 ... FAILED\n\n\
        failures:\n\n---- __modelqa_tests::case_2 stdout ----\n\nthread '__modelqa_tests::case_2' (3644) panicked at \
        /tmp/x/solution.rs:8:27:\nassertion `left == right` failed\n  left: 1\n right: 2\nnote: run with \
        `RUST_BACKTRACE=1`\n\n\nfailures:\n    __modelqa_tests::case_2\n";
    assert_eq!(
        rust_failure(report),
        Some((2, "assertion `left == right` failed, left: 1, right: 2".to_string()))
    );
    assert_eq!(rust_failure("test result: ok. 2 passed"), None);
    let source = Path::new("/tmp/x/solution.rs");
    assert_eq!(
        short_error(
            "/tmp/x/solution.rs:1:27: error[E0308]: mismatched types: expected `i32`, found `()`",
            source
        ),
        "line 1, column 27: error[E0308]: mismatched types: expected `i32`, found `()`"
    );
    assert_eq!(short_error("error: linking with `cc` failed", source), "error: linking with `cc` failed");
}
