"""The Warrenfile parser: every instruction, substitution, and every refusal with its line."""

from __future__ import annotations

import pytest

from warren.cp.services.template_spec import (
    MAX_SPEC_BYTES,
    MAX_STEPS,
    ArgStep,
    CopyStep,
    EnvStep,
    FromStep,
    ReadyStep,
    RunStep,
    SpecConfig,
    StartStep,
    UserStep,
    WorkdirStep,
    parse,
)
from warren.errors import InvalidRequest, PayloadTooLarge


def refused(source: str, line: int | None, fragment: str, **kwargs: object) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse(source, **kwargs)  # type: ignore[arg-type]
    message = info.value.message
    if line is not None:
        assert message.startswith(f"line {line}:"), message
    assert fragment in message, message


def test_from_kinds() -> None:
    assert parse("FROM minimal").base == FromStep(1, "minimal", "minimal")
    assert parse("from my-env").base == FromStep(1, "template", "my-env", None)
    assert parse("FROM my-env:v2").base == FromStep(1, "template", "my-env", "v2")
    assert parse("FROM minimal:v1").base == FromStep(1, "template", "minimal", "v1")
    assert parse("FROM debian:bookworm").base == FromStep(1, "debian", "bookworm")


def test_from_refusals() -> None:
    refused("FROM debian:sid", 1, "not supported")
    refused("FROM Bad/Name", 1, "not a template name")
    refused("FROM a AS b", 1, "AS")
    refused("FROM minimal\nFROM minimal", 2, "only one FROM")
    refused("RUN true", 1, "first instruction must be FROM")
    refused("# nothing\n\n", None, "no FROM")


def test_arg_before_from_serves_from_only() -> None:
    spec = parse("ARG BASE=my-env\nFROM ${BASE}:v3\nRUN echo $BASE")
    assert spec.base == FromStep(2, "template", "my-env", "v3")
    run = spec.steps[1]
    assert isinstance(run, RunStep) and run.context.args == ()
    assert parse("ARG BASE=x\nFROM $BASE", build_args={"BASE": "other"}).base.name == "other"


def test_comments_blank_lines_continuations_and_case() -> None:
    spec = parse("# top\n\nfrom minimal\n  run echo a \\\n  # inside\n\n   && echo b\nRuN true\n")
    assert [type(s) for s in spec.steps] == [FromStep, RunStep, RunStep]
    first = spec.steps[1]
    assert isinstance(first, RunStep)
    assert first.line == 4 and first.command == "echo a && echo b"
    assert spec.steps[2].line == 8


def test_run_shell_and_exec_forms_keep_variables_for_the_shell() -> None:
    spec = parse('FROM minimal\nENV A=1\nRUN echo "$A" ${A}\nRUN ["sh", "-c", "echo $A x"]')
    shell, exec_form = spec.steps[2], spec.steps[3]
    assert isinstance(shell, RunStep) and shell.command == 'echo "$A" ${A}'
    assert shell.context.env == (("A", "1"),)
    assert isinstance(exec_form, RunStep) and exec_form.command == "sh -c 'echo $A x'"
    refused("FROM minimal\nRUN", 2, "needs an argument")
    refused("FROM minimal\nRUN --mount=type=cache x", 2, "--mount")
    refused('FROM minimal\nRUN ["a", 1]', 2, "JSON array of strings")


def test_env_forms_and_substitution() -> None:
    spec = parse(
        "FROM minimal\nENV A=1 B=\"two words\" C='$A'\nENV D=$A-${B} E=\\$A\nENV F the rest $A\n"
        "ENV G=${NOPE:-dflt} H=${A:+set} I=${NOPE:+x}"
    )
    assert spec.steps[1] == EnvStep(2, (("A", "1"), ("B", "two words"), ("C", "$A")))
    assert spec.steps[2] == EnvStep(3, (("D", "1-two words"), ("E", "$A")))
    assert spec.steps[3] == EnvStep(4, (("F", "the rest 1"),))
    assert spec.steps[4] == EnvStep(5, (("G", "dflt"), ("H", "set"), ("I", "")))
    assert spec.config.env["F"] == "the rest 1"


def test_env_uses_values_from_before_the_instruction() -> None:
    spec = parse("FROM minimal\nENV A=old\nENV A=new B=$A")
    assert spec.steps[2] == EnvStep(3, (("A", "new"), ("B", "old")))


def test_env_refusals() -> None:
    refused("FROM minimal\nENV A=1 B", 2, "is not KEY=VALUE")
    refused("FROM minimal\nENV 1A=1", 2, "not a valid variable name")
    refused("FROM minimal\nENV LONELY", 2, "needs a value")
    refused('FROM minimal\nENV A="open', 2, "unterminated double quote")
    refused("FROM minimal\nENV A='open", 2, "unterminated single quote")
    refused("FROM minimal\nENV A=${B", 2, "unterminated")
    refused("FROM minimal\nENV A=${B-C}", 2, "bad variable reference")


def test_workdir_resolves_and_substitutes() -> None:
    spec = parse("FROM minimal\nENV D=srv\nWORKDIR /$D\nWORKDIR app/../code\nWORKDIR //x//y/")
    assert spec.steps[2] == WorkdirStep(3, "/srv")
    assert spec.steps[3] == WorkdirStep(4, "/srv/code")
    assert spec.steps[4] == WorkdirStep(5, "/x/y")
    assert spec.config.workdir == "/x/y"
    assert parse("FROM minimal").config.workdir == ""


def test_user() -> None:
    spec = parse("FROM minimal\nARG U=app\nUSER $U\nRUN id")
    assert spec.steps[2] == UserStep(3, "app")
    run = spec.steps[3]
    assert isinstance(run, RunStep) and run.context.user == "app"
    assert parse("FROM minimal\nUSER 1000:1000").config.user == "1000:1000"
    refused("FROM minimal\nUSER a b", 2, "is not a user name")
    refused("FROM minimal\nUSER ../x", 2, "is not a user name")


def test_copy_forms() -> None:
    spec = parse(
        'FROM minimal\nWORKDIR /app\nCOPY a.txt .\nCOPY /src/x dir/ sub/\nCOPY ["s p", "/opt/t"]\n'
        "ENV T=/etc\nCOPY conf $T/conf\nCOPY ./ /all/"
    )
    assert spec.steps[2] == CopyStep(3, ("a.txt",), "/app", True)
    assert spec.steps[3] == CopyStep(4, ("src/x", "dir"), "/app/sub", True)
    assert spec.steps[4] == CopyStep(5, ("s p",), "/opt/t", False)
    assert spec.steps[6] == CopyStep(7, ("conf",), "/etc/conf", False)
    assert spec.steps[7] == CopyStep(8, (".",), "/all", True)


def test_copy_refusals() -> None:
    refused("FROM minimal\nCOPY --chown=app:app a /b", 2, "--chown is not supported")
    refused("FROM minimal\nCOPY --from=x a /b", 2, "--from is not supported")
    refused("FROM minimal\nCOPY a", 2, "a source and a destination")
    refused("FROM minimal\nCOPY ../secret /b", 2, "outside the build context")
    refused("FROM minimal\nCOPY a/../../x /b", 2, "outside the build context")


def test_start_cmd_and_ready() -> None:
    spec = parse(
        'FROM minimal\nSTART python3 -m http.server 8000\nREADY curl -sf localhost:8000\nCMD ["sleep", "1 h"]'
    )
    assert spec.steps[1] == StartStep(2, "python3 -m http.server 8000")
    assert spec.steps[2] == ReadyStep(3, "curl -sf localhost:8000", 60)
    assert spec.steps[3] == StartStep(4, "sleep '1 h'")
    assert spec.config == SpecConfig({}, "", "", "sleep '1 h'", "curl -sf localhost:8000", 60)
    assert parse("FROM minimal\nREADY --timeout=5 true").config.ready_timeout_sec == 5
    refused("FROM minimal\nREADY --timeout=0 true", 2, "--timeout must be")
    refused("FROM minimal\nREADY --timeout=9999 true", 2, "--timeout must be")
    refused("FROM minimal\nREADY --retries=3 true", 2, "--retries")
    refused("FROM minimal\nSTART []", 2, "non-empty JSON array")


def test_arg_values() -> None:
    spec = parse("FROM minimal\nARG A\nARG B=dflt\nARG C=x\nRUN env", build_args={"C": "given"})
    assert spec.steps[1:4] == [ArgStep(2, "A", None), ArgStep(3, "B", "dflt"), ArgStep(4, "C", "given")]
    run = spec.steps[4]
    assert isinstance(run, RunStep)
    assert run.context.run_env() == {"A": "", "B": "dflt", "C": "given"}
    refused("FROM minimal\nARG 9x", 2, "not a valid variable name")
    refused("FROM minimal\nARG A B", 2, "one name")
    refused("FROM minimal", None, "not declared by an ARG: X", build_args={"X": "1"})
    refused("FROM minimal\nARG X", None, "not a valid variable name", build_args={"X": "1", "no-t": "1"})


def test_env_overrides_arg_in_substitution_and_run_env() -> None:
    spec = parse("FROM minimal\nARG V=arg\nENV V=env\nWORKDIR /$V\nRUN true")
    assert spec.steps[3] == WorkdirStep(4, "/env")
    run = spec.steps[4]
    assert isinstance(run, RunStep) and run.context.run_env() == {"V": "env"}


def test_base_config_is_inherited() -> None:
    base = SpecConfig({"P": "/opt"}, "/srv", "app", "serve", "check", 10)
    spec = parse("FROM my-env\nCOPY f .\nENV Q=$P/bin", base=base)
    assert spec.steps[1] == CopyStep(2, ("f",), "/srv", True)
    assert spec.config == SpecConfig({"P": "/opt", "Q": "/opt/bin"}, "/srv", "app", "serve", "check", 10)


@pytest.mark.parametrize(
    "keyword",
    ["ADD", "EXPOSE", "ENTRYPOINT", "VOLUME", "HEALTHCHECK", "ONBUILD", "SHELL", "STOPSIGNAL", "LABEL"],
)
def test_unsupported_instructions_name_their_line(keyword: str) -> None:
    refused(f"FROM minimal\nRUN true\n\n{keyword.lower()} something", 4, "not supported")


def test_unknown_instruction() -> None:
    refused("FROM minimal\nFOO bar", 2, "unknown instruction 'FOO'")


def test_bounds() -> None:
    with pytest.raises(PayloadTooLarge):
        parse("FROM minimal\n" + "#" * MAX_SPEC_BYTES)
    refused("FROM minimal\n" + "RUN true\n" * MAX_STEPS, MAX_STEPS + 1, f"more than {MAX_STEPS} steps")
    refused("FROM minimal\nRUN \x00", None, "NUL")
    refused("FROM minimal\nARG X", None, "at most", build_args={f"A{i}": "" for i in range(65)})


def test_canonical_ignores_the_line_and_sees_the_context() -> None:
    a = parse("FROM minimal\nRUN make").steps[1]
    b = parse("FROM minimal\n\n\nRUN make").steps[1]
    c = parse("FROM minimal\nENV X=1\nRUN make").steps[2]
    assert b.line == 4 and a.canonical() == b.canonical()
    assert a.canonical() != c.canonical()
    assert a.canonical().startswith('["RUN",')
