//! The arithmetic oracle: expressions found, answers committed to, verdicts.
use super::*;

#[track_caller]
fn value(question: &str, expected: Option<f64>) {
    assert_eq!(Expression::find(question).map(|e| e.value), expected, "{question}");
}

#[test]
fn finds_expressions_in_the_ways_people_ask() {
    value("What is 2+2?", Some(4.0));
    value("What is 2 + 2?", Some(4.0));
    value("Calculate 7*8", Some(56.0));
    value("15-7=", Some(8.0));
    value("What is 100/4?", Some(25.0));
    value("What is 3 - 10?", Some(-7.0));
    value("What is -5 + 3?", Some(-2.0));
    value("What is 123 * 456? Show all intermediate multiplication steps.", Some(56088.0));
    value("Calculate 999 + 1.", Some(1000.0));
    value("What is 1000000 - 999999?", Some(1.0));
    value("What is 2 + 3 * 4?", Some(14.0));
    value("What is (2 + 3) * 4?", Some(20.0));
    value("What is 7 × 6?", Some(42.0));
    value("What is 0.1 + 0.2? Give a precise answer.", Some(0.30000000000000004));
    // Not arithmetic a machine can check.
    value("Given x=5 and y=3, what is x*y?", None);
    value("List the numbers from 1 to 20, then sum them all.", None);
    value("Define a function add(a,b) that returns a+b. What does add(3,4) return?", None);
    value("What is 5/0?", None);
    value("Hello!", None);
    value("Qwen2.5-Coder", None);
}

#[track_caller]
fn check(question: &str, output: &str, pass: bool) {
    let v = judge(question, output, None);
    assert_eq!(v.is_pass(), pass, "{question:?} → {output:?}: {v:?}");
}

#[test]
fn accepts_right_answers() {
    check("What is 2+2?", "4", true);
    check("What is 2+2?", " 4\n", true);
    check("What is 2+2?", "The answer is 4.", true);
    check("What is 2+2?", "2 + 2 = 4", true);
    check("What is 2+2?", "2+2 is 4, of course.", true);
    check("What is 2+2?", "four", true);
    check("Calculate 7*8", "56", true);
    check("Calculate 7*8", "7 * 8 = 56", true);
    check("15-7=", "8", true);
    check("What is 3 - 10?", "-7", true);
    check("What is 3 - 10?", "3 - 10 = -7", true);
    check("What is 1000000 - 999999?", "1", true);
    check("What is 123 * 456?", "56,088", true);
    check("What is 100/4?", "25.0", true);
    check("What is 0.1 + 0.2?", "0.3", true);
}

#[test]
fn rejects_wrong_answers() {
    check("What is 2+2?", "5", false);
    check("What is 2+2?", "24", false);
    check("What is 2+2?", "44", false);
    check("What is 2+2?", "2 + 2", false);
    check("What is 2+2?", "2+23", false);
    check("What is 2+2?", "I cannot say.", false);
    check("What is 2+2?", "", false);
    check("Calculate 7*8", "54", false);
    check("What is 3 - 10?", "7", false);
    check("What is 3 - 10?", "3 - 10 = 7", false);
    check("What is 0.1 + 0.2?", "0.4", false);
    check("Hello", "4", false);
}

#[test]
fn tolerance_widens_the_match() {
    assert!(judge("What is 10/3?", "3.33", Some(0.01)).is_pass());
    assert!(!judge("What is 10/3?", "3.3", Some(0.01)).is_pass());
}

/// What the issue found passing for 47 + 38, and more ways of not committing to one number.
const MUST_REJECT: &[(&str, &str)] = &[
    // The three.
    ("85 86 87 88 89", "several numbers (85, 86, 87, 88, 89)"),
    ("maybe 85 or 84", "hedges (\"maybe\")"),
    ("85 is wrong; it is 86", "corrects itself (\"is wrong\")"),
    // Several numbers.
    ("85, 86", "several numbers (85, 86)"),
    ("85 86", "several numbers (85, 86)"),
    ("85\n86", "several numbers (85, 86)"),
    ("85-86", "several numbers (85, -86)"),
    ("8 5", "several numbers (8, 5)"),
    ("1. 85\n2. 86", "several numbers (1, 85, 2, 86)"),
    // Hedges.
    ("approximately 85", "hedges (\"approximately\")"),
    ("about 85", "hedges (\"about\")"),
    ("85 or 86", "hedges (\"or\")"),
    ("85 (or 86)", "hedges"),
    ("The answer is 85 or 86.", "hedges"),
    ("It could be 84 but 85", "hedges (\"could be\")"),
    ("between 80 and 90", "hedges (\"between\")"),
    ("I think it's 85", "hedges (\"I think\")"),
    ("Probably 85.", "hedges (\"Probably\")"),
    ("~85", "hedges (\"~\")"),
    ("≈ 85", "hedges (\"≈\")"),
    ("85 ± 1", "hedges (\"±\")"),
    ("85 or so", "hedges"),
    ("Either 85 or 86.", "hedges (\"Either\")"),
    // Self-corrections.
    ("85? no, 86", "corrects itself (\"no,\")"),
    ("85. Wait, 86.", "corrects itself (\"Wait\")"),
    ("86, sorry, 85", "corrects itself (\"sorry\")"),
    ("Actually, it is 85.", "corrects itself (\"Actually\")"),
    ("~~84~~ 85", "hedges (\"~\")"),
    // One number, the wrong one.
    ("-85", "answers -85"),
    ("47 + 38 = 86", "answers 86"),
    ("850", "answers 850"),
    ("8.5", "answers 8.5"),
    ("The answer is 38.", "answers 38"),
    // No number at all.
    ("47 + 38", "gives no number"),
    ("I cannot compute that.", "gives no number"),
];

/// Honest answers to 47 + 38, in the forms models write them.
const MUST_ACCEPT: &[&str] = &[
    "85",
    "85\n",
    "  85  ",
    "85.",
    "85.0",
    "**85**",
    "`85`",
    "$85$",
    "= 85",
    "47 + 38 = 85",
    "47+38=85",
    "The answer is 85.",
    "Answer: 85",
    "It's 85!",
    "85, because 47 + 38 = 85.",
    "The sum of 47 and 38 is 85.",
    "85 is the sum of 47 and 38.",
    "47 plus 38 equals 85",
    "47 + 38 = 40 + 30 + 15 = 85",
    "\\boxed{85}",
];

#[test]
fn an_answer_is_the_one_number_the_output_commits_to() {
    let question = "What is 47 + 38?";
    for (output, why) in MUST_REJECT {
        let v = judge(question, output, None);
        let Verdict::Falsified(reason) = &v else { panic!("{output:?} must be rejected, got {v:?}") };
        assert!(reason.starts_with("expected 47 + 38 = 85, "), "{output:?}: {reason}");
        assert!(reason.contains(why), "{output:?}: {reason:?} should say {why:?}");
    }
    for output in MUST_ACCEPT {
        let v = judge(question, output, None);
        assert_eq!(v, Verdict::Corroborated("47 + 38 = 85".into()), "{output:?}");
    }
    check("What is 1000 + 234?", "1,234", true);
    check("What is 1000 + 234?", "1000 + 234 = 1,234", true);
    check("What is 5 * 1?", "5 * 1 = 5", true);
    check("What is 5 * 1?", "5", true);
    check("What is 0 * 8?", "Multiplying 0 by 8 gives 0.", true);
    check("What is 3 - 10?", "3 - 10 = -7", true);
    check("What is 3 - 10?", "-7 or -8", false);
    // The seed playbooks ask for the working: a final answer marked as one is the answer.
    let steps = "Write a detailed step-by-step solution to: What is 123 * 456? Show all intermediate multiplication steps.";
    check(steps, "123 * 6 = 738\n123 * 50 = 6150\n123 * 400 = 49200\n738 + 6150 + 49200 = 56088", true);
    check(steps, "123 * 6 = 738\n123 * 50 = 6150\n123 * 400 = 49200\nThe answer is 56,088.", true);
    check(steps, "123 * 6 = 738\n123 * 50 = 6150\n123 * 400 = 49200\nso 56089", false);
    check(steps, "738\n6150\n49200", false);
}

/// The questions of qa-tiny's arithmetic scenarios, by golden file name (the generated ones as
/// the seed 42 makes them).
const QA_TINY_QUESTIONS: &[(&str, &str)] = &[
    ("arithmetic_add", "What is 47 + 38?"),
    ("arithmetic_multiply", "Calculate 7*8"),
    ("arithmetic_subtract", "85 - 23 ="),
    ("edge_largest_operands", "What is 99 + 99?"),
    ("edge_other_script", "你好 What is 2 + 2?"),
    ("edge_polite_suffix", "Calculate 7*8 please"),
    ("edge_question_prefix", "Q: What is 6 + 3?"),
    ("edge_tab_prefix", "\tWhat is 7*8?"),
    ("edge_upper_case", "WHAT IS 2 + 2?"),
    ("edge_zero", "What is 0 + 0?"),
    ("times-000", "Calculate 1*3"),
    ("times-001", "What is 0 * 8?"),
    ("times-002", "What is 5 * 0?"),
    ("times-003", "What is 5 * 4?"),
    ("times-004", "8 * 7 ="),
    ("times-005", "What is 6 * 7?"),
    ("times-006", "What is 7 * 4?"),
    ("times-007", "Calculate 9*6"),
];

/// Golden answers that no arithmetic oracle judges.
const QA_TINY_OTHERS: &[&str] = &["capital", "code_python", "code_rust", "remember_word", "repeat"];

/// qa-tiny's real answers, as its golden files hold them, keep their verdicts: every one is
/// right, and every one is still accepted.
#[test]
fn qa_tiny_golden_answers_keep_their_verdicts() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../golden/qa-tiny");
    let mut judged = 0;
    for model in ["qa-tiny-llama", "qa-tiny-mistral", "qa-tiny-qwen2"] {
        let dir = root.join(model);
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("an entry").path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".snap"))
            else {
                continue;
            };
            let Some((_, question)) = QA_TINY_QUESTIONS.iter().find(|(n, _)| *n == name) else {
                assert!(QA_TINY_OTHERS.contains(&name), "{}: add its question to the table", path.display());
                continue;
            };
            let output = crate::checks::golden::read_snapshot(&path).expect("a snapshot");
            let v = judge(question, &output, None);
            assert!(v.is_pass(), "{model}/{name}: {question:?} → {output:?}: {v:?}");
            judged += 1;
        }
    }
    assert_eq!(judged, 3 * QA_TINY_QUESTIONS.len(), "every model has every answer");
}
