# The runner of the `code_tests` oracle for Python (harness/src/oracle/code_tests.rs): compiles
# the model's program, runs it as a module named `solution`, then runs each test in the
# module's namespace, stopping at the first that fails. Its verdict is one line on stdout,
# marked with a nonce the program cannot have written by chance:
#   <mark> {"stage": "compile" | "load" | "test" | "passed", ...}
# Started as `python3 -I -S -B code_tests.py case.json`; case.json holds the mark, the program
# and the tests.
import json
import sys


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        case = json.load(f)
    mark, program, tests = case["mark"], case["program"], case["tests"]
    out = sys.stdout

    def report(stage, **fields):
        fields["stage"] = stage
        out.write("\n" + mark + " " + json.dumps(fields) + "\n")
        out.flush()

    try:
        code = compile(program, "solution.py", "exec")
    except SyntaxError as e:
        report("compile", line=e.lineno, error="%s: %s" % (type(e).__name__, e.msg))
        return 1
    namespace = {"__name__": "solution", "__builtins__": __builtins__}
    try:
        exec(code, namespace)
    except BaseException as e:  # SystemExit and KeyboardInterrupt are answers too, wrong ones
        report("load", line=solution_line(e), error=describe(e))
        return 1
    for index, test in enumerate(tests, 1):
        try:
            exec(compile(test, "test %d" % index, "exec"), namespace)
        except AssertionError as e:
            report("test", index=index, error=explain(test, namespace, e))
            return 1
        except BaseException as e:
            report("test", index=index, error=describe(e))
            return 1
    report("passed", count=len(tests))
    return 0


def describe(e):
    text = str(e)
    return type(e).__name__ + (": " + text if text else "")


def solution_line(e):
    import traceback

    lines = [f.lineno for f in traceback.extract_tb(e.__traceback__) if f.filename == "solution.py"]
    return lines[-1] if lines else None


def explain(test, namespace, error):
    """For `assert left == right`, what the left side was; else the assertion's own message."""
    try:
        import ast

        body = ast.parse(test).body
        if len(body) == 1 and isinstance(body[0], ast.Assert):
            check = body[0].test
            if isinstance(check, ast.Compare) and len(check.ops) == 1 and isinstance(check.ops[0], ast.Eq):
                left = ast.get_source_segment(test, check.left)
                got = eval(compile(ast.Expression(check.left), "test", "eval"), namespace)
                want = eval(compile(ast.Expression(check.comparators[0]), "test", "eval"), namespace)
                return "%s is %s, expected %s" % (left, short(got), short(want))
    except BaseException:
        pass
    return describe(error) if str(error) else "the assertion is false"


def short(value):
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "…"


sys.exit(main())
