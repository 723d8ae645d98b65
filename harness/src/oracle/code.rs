//! The `code_syntax` oracle: the code a model wrote must parse, by a real parser (RustPython's
//! for Python, syn for Rust). When the question is the start of a function, the question and the
//! answer are parsed together, as the program they make.

use super::spec::Language;

use super::Verdict;

/// The language a question's code is in, when it starts a Python or Rust definition.
pub fn language_of(question: &str) -> Option<Language> {
    let q = question.trim_start();
    if ["def ", "class ", "import ", "from ", "async def "].iter().any(|p| q.starts_with(p)) {
        Some(Language::Python)
    } else if ["fn ", "pub fn ", "struct ", "impl ", "enum ", "use "].iter().any(|p| q.starts_with(p)) {
        Some(Language::Rust)
    } else {
        None
    }
}

/// The language tag and code of the first fenced block of `text`, if it has one.
fn fenced(text: &str) -> Option<(Option<Language>, &str)> {
    let start = text.find("```")?;
    let after = &text[start + 3..];
    let newline = after.find('\n')?;
    let tag = match after[..newline].trim().to_ascii_lowercase().as_str() {
        "python" | "py" => Some(Language::Python),
        "rust" | "rs" => Some(Language::Rust),
        _ => None,
    };
    let body = &after[newline + 1..];
    Some((tag, body.find("```").map_or(body, |end| &body[..end])))
}

/// The first syntax error of `source`, with its line where the parser gives one; `None` when
/// it parses. (A parse either succeeds or names its error: there is no third way.)
pub(super) fn syntax_error(language: Language, source: &str) -> Option<String> {
    match language {
        Language::Python => {
            use rustpython_parser::{Mode, parse};
            parse(source, Mode::Module, "<output>").err().map(|e| {
                let line =
                    source[..(u32::from(e.offset) as usize).min(source.len())].matches('\n').count() + 1;
                format!("line {line}: {}", e.error)
            })
        }
        Language::Rust => syn::parse_file(source).err().map(|e| {
            let start = e.span().start();
            format!("line {}, column {}: {e}", start.line, start.column + 1)
        }),
    }
}

pub(super) fn language_name(language: Language) -> &'static str {
    match language {
        Language::Python => "Python",
        Language::Rust => "Rust",
    }
}

/// The syntax error of one test of `code_tests`, if it has one: a Python test is a module of
/// statements, a Rust test the body of a function.
pub(super) fn test_syntax_error(language: Language, test: &str) -> Option<String> {
    match language {
        Language::Python => syntax_error(Language::Python, test),
        Language::Rust => syn::parse_str::<syn::Block>(&format!("{{\n{test}\n}}")).err().map(|e| {
            let start = e.span().start();
            format!("line {}, column {}: {e}", start.line.saturating_sub(1), start.column + 1)
        }),
    }
}

/// The program an answer makes: a fenced block in it stands alone; an answer to a question that
/// starts a definition continues the question on the next line, as the model saw it; any other
/// answer is the program itself.
pub(super) fn program_of(question: &str, output: &str) -> String {
    match (language_of(question), fenced(output)) {
        (_, Some((_, code))) => code.to_string(),
        (Some(_), None) => {
            format!("{}\n{}", question.trim_end(), output.strip_prefix('\n').unwrap_or(output))
        }
        (None, None) => output.to_string(),
    }
}

pub(super) fn judge(question: &str, output: &str, language: Option<Language>) -> Verdict {
    let from_question = language_of(question);
    let block = fenced(output);
    let Some(language) = language.or(from_question).or(block.and_then(|(tag, _)| tag)) else {
        return Verdict::Falsified("cannot tell which language to parse: set `language`".into());
    };
    let source = program_of(question, output);
    let name = language_name(language);
    match syntax_error(language, &source) {
        None => Verdict::Corroborated(format!("the code parses as {name}")),
        Some(e) => Verdict::Falsified(format!("the code is not valid {name}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(question: &str, output: &str, pass: bool) {
        let v = judge(question, output, None);
        assert_eq!(v.is_pass(), pass, "{question:?} + {output:?}: {v:?}");
    }

    #[test]
    fn valid_code_parses() {
        check("def add(a, b):", "\n    return a + b", true);
        check(
            "def fibonacci(n):",
            "\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)",
            true,
        );
        check("fn add(a: i32, b: i32) -> i32 {", "\n    a + b\n}", true);
        check("fn main() {", "\n    println!(\"Hello, world!\");\n}", true);
        assert!(judge("Write a Python function.", "```python\ndef f():\n    return 1\n```", None).is_pass());
        assert!(
            judge("Write a function.", "Here:\n```\ndef f():\n    return 1\n```", Some(Language::Python))
                .is_pass()
        );
        assert!(
            !judge("Write a function.", "```\ndef f():\n    return 1\n```", None).is_pass(),
            "no language to tell"
        );
    }

    #[test]
    fn broken_code_is_rejected_with_where() {
        check("def add(a, b):", "\n    return a +", false);
        check("def add(a, b):", "\nreturn a + b", false);
        check("fn add(a: i32, b: i32) -> i32 {", "\n    a + b", false);
        check("fn main() {", "\n    let x = ;\n}", false);
        let v = judge("fn main() {", "\n    let x = ;\n}", None);
        let Verdict::Falsified(why) = v else { panic!() };
        assert!(why.contains("line 2"), "{why}");
    }
}
