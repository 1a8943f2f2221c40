"""The Warrenfile parser: a Dockerfile subset (docs/templates.md §5). Pure: text in, `Spec` out.

Instructions: FROM, RUN, ENV, WORKDIR, USER, COPY, ARG, START (CMD is its synonym), READY.
Keywords are case-insensitive; `#` comment lines, blank lines and `\\` line continuations as in
Docker. Variables (`$NAME`, `${NAME}`, `${NAME:-word}`, `${NAME:+word}`; `\\$` is a literal `$`)
are substituted, like Docker does, in FROM (ARGs declared before it), ARG, ENV, WORKDIR, USER
and COPY, from the ARGs and ENVs declared so far (ENV wins); RUN, START and READY text is left
to the shell, which sees ARGs and ENVs in its environment during the build.

The parser resolves everything the build needs up front: every step carries the state it runs
in (env, args, workdir, user), so a step's cache key is a hash of its canonical form alone.
Every refusal is an `InvalidRequest` whose message starts with `line N:`.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
import re
import shlex
from dataclasses import dataclass, field

from warren.cp.services.env import validate_env
from warren.errors import InvalidRequest, PayloadTooLarge

MAX_SPEC_BYTES = 256 * 1024
MAX_STEPS = 256
MAX_BUILD_ARGS = 64
MAX_READY_TIMEOUT_S = 3600
DEFAULT_READY_TIMEOUT_S = 60
# What variable substitution may add in a whole spec. Without it a few KiB of `ENV b=$a$a$a…`,
# `ENV c=$b$b$b…` (each line multiplying the last) made the CP build strings of gigabytes while
# parsing a build request.
MAX_SUBSTITUTED_BYTES = 4 * MAX_SPEC_BYTES
MAX_PATH_BYTES = 4096  # PATH_MAX: the kernel takes no longer path
MAX_COMMAND_BYTES = 128 * 1024 - 1  # MAX_ARG_STRLEN, its NUL left out

NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# A template's name, and a tag of one: what sandboxes, snapshots, builds and imports accept.
TEMPLATE_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
TEMPLATE_NAME_RE = re.compile(rf"^{TEMPLATE_NAME}$")
# A template reference (FROM, a create, a warm pool): `name` or `name:tag`.
TEMPLATE_REF_RE = re.compile(rf"^({TEMPLATE_NAME})(?::({TEMPLATE_NAME}))?$")
USER_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,31})?$")
DEBIAN_SUITES = frozenset({"bookworm"})

# Instructions Docker has and we do not, with why (the message a user reads).
_UNSUPPORTED = {
    "ADD": "ADD is not supported: use COPY (remote URLs and archives are not fetched)",
    "ENTRYPOINT": "ENTRYPOINT is not supported: use START for the command every sandbox runs",
    "EXPOSE": "EXPOSE is not supported: every port of a sandbox is reachable through its API",
    "VOLUME": "VOLUME is not supported",
    "HEALTHCHECK": "HEALTHCHECK is not supported: use READY",
    "ONBUILD": "ONBUILD is not supported",
    "SHELL": "SHELL is not supported: RUN, START and READY use /bin/sh -c",
    "STOPSIGNAL": "STOPSIGNAL is not supported",
    "LABEL": "LABEL is not supported",
    "MAINTAINER": "MAINTAINER is not supported",
}


@dataclass(frozen=True)
class Step:
    line: int

    @property
    def keyword(self) -> str:
        return _KEYWORDS[type(self)]

    def canonical(self) -> str:
        """Everything that affects the step's result, as stable JSON (the line number does not)."""
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k != "line"}
        return json.dumps([self.keyword, fields], sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class FromStep(Step):
    kind: str  # minimal | template | debian
    name: str  # the template's name, or the suite for `debian`
    tag: str | None = None

    def describe(self) -> str:
        if self.kind == "debian":
            return f"debian:{self.name}"
        return self.name if self.tag is None else f"{self.name}:{self.tag}"


@dataclass(frozen=True)
class Context:
    """The state a layer-making step runs in (the build's env is `args` overlaid by `env`)."""

    env: tuple[tuple[str, str], ...] = ()
    args: tuple[tuple[str, str], ...] = ()
    workdir: str = ""
    user: str = ""

    def run_env(self) -> dict[str, str]:
        return {**dict(self.args), **dict(self.env)}


@dataclass(frozen=True)
class RunStep(Step):
    command: str
    context: Context = field(default_factory=Context)


@dataclass(frozen=True)
class CopyStep(Step):
    sources: tuple[str, ...]  # relative to the context's root, normalised, never `..`
    dest: str  # absolute, normalised
    dest_is_dir: bool  # files go into dest (it ends with `/` or `.`, or several sources)


@dataclass(frozen=True)
class WorkdirStep(Step):
    path: str  # absolute, normalised


@dataclass(frozen=True)
class EnvStep(Step):
    pairs: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ArgStep(Step):
    name: str
    value: str | None  # the build arg, else the default; None: declared without either


@dataclass(frozen=True)
class UserStep(Step):
    user: str


@dataclass(frozen=True)
class StartStep(Step):
    command: str


@dataclass(frozen=True)
class ReadyStep(Step):
    command: str
    timeout_sec: int = DEFAULT_READY_TIMEOUT_S


_KEYWORDS: dict[type, str] = {
    FromStep: "FROM",
    RunStep: "RUN",
    CopyStep: "COPY",
    WorkdirStep: "WORKDIR",
    EnvStep: "ENV",
    ArgStep: "ARG",
    UserStep: "USER",
    StartStep: "START",
    ReadyStep: "READY",
}
LAYER_STEPS = (RunStep, CopyStep, WorkdirStep)


@dataclass(frozen=True)
class SpecConfig:
    """The template's defaults (TemplateConfig): what the last ENV/WORKDIR/USER/START/READY left."""

    env: dict[str, str]
    workdir: str
    user: str
    start_cmd: str
    ready_cmd: str
    ready_timeout_sec: int

    def as_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Spec:
    source: str
    steps: list[Step]
    config: SpecConfig

    @property
    def base(self) -> FromStep:
        step = self.steps[0]
        assert isinstance(step, FromStep)
        return step


# ------------------------------------------------------------------------------------ lexing


def _logical_lines(source: str) -> list[tuple[int, str]]:
    """(first line number, text) per instruction: continuations joined, comments dropped."""
    out: list[tuple[int, str]] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(source.splitlines(), start=1):
        stripped = raw.strip()
        if parts and (not stripped or stripped.startswith("#")):
            continue  # Docker skips comment and empty lines inside a continuation
        if not parts:
            if not stripped or stripped.startswith("#"):
                continue
            start = number
        if raw.rstrip().endswith("\\"):
            parts.append(raw.rstrip()[:-1])
            continue
        parts.append(raw)
        out.append((start, " ".join(p.strip() for p in parts).strip()))
        parts = []
    if parts:
        out.append((start, " ".join(p.strip() for p in parts).strip()))
    return out


class _Budget:
    """The bytes variable substitution may still add in this parse (``MAX_SUBSTITUTED_BYTES``)."""

    def __init__(self) -> None:
        self.left = MAX_SUBSTITUTED_BYTES

    def spend(self, line: int, value: str) -> str:
        self.left -= len(value)
        if self.left < 0:
            raise PayloadTooLarge(
                f"line {line}: variable substitution makes the spec larger than "
                f"{MAX_SUBSTITUTED_BYTES // 1024} KiB"
            )
        return value


class _Lexer:
    """Docker's word processing: quotes, backslash escapes and variable substitution."""

    def __init__(self, line: int, variables: dict[str, str], budget: _Budget) -> None:
        self.line = line
        self.vars = variables
        self.budget = budget

    def words(self, text: str) -> list[str]:
        return self._scan(text, split=True)

    def word(self, text: str) -> str:
        """The whole text as one word (whitespace kept), quotes removed, variables substituted."""
        return "".join(self._scan(text, split=False))

    def _scan(self, text: str, *, split: bool) -> list[str]:
        words: list[str] = []
        cur: list[str] = []
        started = False
        i, n = 0, len(text)
        while i < n:
            ch = text[i]
            if split and ch.isspace():
                if started:
                    words.append("".join(cur))
                    cur, started = [], False
                i += 1
                continue
            started = True
            if ch == "\\" and i + 1 < n:
                cur.append(text[i + 1])
                i += 2
            elif ch == "'":
                end = text.find("'", i + 1)
                if end < 0:
                    raise InvalidRequest(f"line {self.line}: unterminated single quote")
                cur.append(text[i + 1 : end])
                i = end + 1
            elif ch == '"':
                i = self._double_quoted(text, i + 1, cur)
            elif ch == "$":
                i = self._variable(text, i, cur)
            else:
                cur.append(ch)
                i += 1
        if started:
            words.append("".join(cur))
        return words

    def _double_quoted(self, text: str, i: int, cur: list[str]) -> int:
        n = len(text)
        while i < n:
            ch = text[i]
            if ch == '"':
                return i + 1
            if ch == "\\" and i + 1 < n and text[i + 1] in '"\\$':
                cur.append(text[i + 1])
                i += 2
            elif ch == "$":
                i = self._variable(text, i, cur)
            else:
                cur.append(ch)
                i += 1
        raise InvalidRequest(f"line {self.line}: unterminated double quote")

    def _variable(self, text: str, i: int, cur: list[str]) -> int:
        if i + 1 < len(text) and text[i + 1] == "{":
            end = text.find("}", i + 2)
            if end < 0:
                raise InvalidRequest(f"line {self.line}: unterminated ${{...}}")
            cur.append(self._expand(text[i + 2 : end]))
            return end + 1
        m = re.match(r"[A-Za-z_][A-Za-z0-9_]*", text[i + 1 :])
        if m is None:
            cur.append("$")
            return i + 1
        cur.append(self.budget.spend(self.line, self.vars.get(m.group(0), "")))
        return i + 1 + m.end()

    def _expand(self, body: str) -> str:
        name, op, word = body, "", ""
        for candidate in (":-", ":+"):
            if candidate in body:
                name, word = body.split(candidate, 1)
                op = candidate
                break
        if not NAME_RE.match(name):
            raise InvalidRequest(f"line {self.line}: bad variable reference ${{{body}}}")
        value = self.vars.get(name, "")
        if op == ":-":
            return self.budget.spend(self.line, value) if value else self.word(word)
        if op == ":+":
            return self.word(word) if value else ""
        return self.budget.spend(self.line, value)


def _json_form(line: int, rest: str) -> list[str] | None:
    """The exec form `["a", "b"]` as a list, or None when `rest` is the shell form."""
    if not rest.startswith("["):
        return None
    try:
        value = json.loads(rest)
    except ValueError:
        return None  # Docker too reads a non-JSON `[` as the shell form
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise InvalidRequest(f"line {line}: the exec form must be a non-empty JSON array of strings")
    return value


def _command(line: int, keyword: str, rest: str) -> str:
    argv = _json_form(line, rest)
    command = shlex.join(argv) if argv is not None else rest
    if not command.strip():
        raise InvalidRequest(f"line {line}: {keyword} needs a command")
    if len(command.encode("utf-8", "surrogatepass")) > MAX_COMMAND_BYTES:
        # `sh -c <command>`: execve takes no longer argument; START and READY are also kept in
        # every version of the template.
        raise InvalidRequest(f"line {line}: {keyword} is longer than {MAX_COMMAND_BYTES} bytes")
    return command


# ----------------------------------------------------------------------------------- parsing


def _normpath(path: str) -> str:
    normal = posixpath.normpath(path)
    return "/" + normal.lstrip("/")  # normpath keeps a leading `//`


def _check_build_args(build_args: dict[str, str]) -> None:
    if len(build_args) > MAX_BUILD_ARGS:
        raise InvalidRequest(f"at most {MAX_BUILD_ARGS} build args")
    for key, value in build_args.items():
        if not isinstance(key, str) or not NAME_RE.match(key):
            raise InvalidRequest(f"build arg name {key!r} is not a valid variable name")
        if not isinstance(value, str) or "\x00" in value:
            raise InvalidRequest(f"build arg {key} must be a string without NUL")


class _Parser:
    def __init__(self, build_args: dict[str, str], base: SpecConfig | None) -> None:
        self.build_args = build_args
        self.used_args: set[str] = set()
        self.args: dict[str, str] = {}
        self.env: dict[str, str] = dict(base.env) if base else {}
        self.workdir = base.workdir if base else ""  # empty: not set (exec uses the user's home)
        self.user = base.user if base else ""
        self.start_cmd = base.start_cmd if base else ""
        self.ready_cmd = base.ready_cmd if base else ""
        self.ready_timeout = base.ready_timeout_sec if base else DEFAULT_READY_TIMEOUT_S
        self.steps: list[Step] = []
        self.budget = _Budget()

    def variables(self) -> dict[str, str]:
        return {**self.args, **self.env}

    def context(self) -> Context:
        return Context(
            env=tuple(sorted(self.env.items())),
            args=tuple(sorted(self.args.items())),
            workdir=self.workdir,
            user=self.user,
        )

    def instruction(self, line: int, text: str) -> None:
        keyword, _, rest = text.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword in _UNSUPPORTED:
            raise InvalidRequest(f"line {line}: {_UNSUPPORTED[keyword]}")
        handler = _HANDLERS.get(keyword)
        if handler is None:
            raise InvalidRequest(f"line {line}: unknown instruction {keyword[:40]!r}")
        if keyword != "ARG" and keyword != "FROM" and not self.steps:
            raise InvalidRequest(f"line {line}: the first instruction must be FROM (or ARG)")
        if keyword == "FROM" and self.steps:
            raise InvalidRequest(f"line {line}: only one FROM (multi-stage builds are not supported)")
        if not rest:
            raise InvalidRequest(f"line {line}: {keyword} needs an argument")
        step = handler(self, line, rest)
        if self.steps or isinstance(step, FromStep):
            self.steps.append(step)  # an ARG before FROM only serves FROM: not a build step
        if len(self.steps) > MAX_STEPS:
            raise InvalidRequest(f"line {line}: more than {MAX_STEPS} steps")

    def from_(self, line: int, rest: str) -> Step:
        words = _Lexer(line, dict(self.args), self.budget).words(rest)
        if len(words) != 1:
            raise InvalidRequest(f"line {line}: FROM takes one image (`AS` stages are not supported)")
        ref = words[0]
        # ARGs before FROM are only for FROM (as in Docker): the build starts without them.
        self.args = {}
        if ref.lower().startswith("debian:"):
            suite = ref.split(":", 1)[1]
            if suite not in DEBIAN_SUITES:
                raise InvalidRequest(
                    f"line {line}: FROM debian:{suite[:40]} is not supported "
                    f"(supported: {', '.join(sorted(DEBIAN_SUITES))})"
                )
            return FromStep(line, "debian", suite)
        m = TEMPLATE_REF_RE.match(ref)
        if m is None:
            raise InvalidRequest(f"line {line}: FROM {ref[:80]!r} is not a template name[:tag]")
        name, tag = m.group(1), m.group(2)
        if name == "minimal" and tag is None:
            return FromStep(line, "minimal", "minimal")
        return FromStep(line, "template", name, tag)

    def arg(self, line: int, rest: str) -> Step:
        words = _Lexer(line, self.variables(), self.budget).words(rest)
        if len(words) != 1:
            raise InvalidRequest(f"line {line}: ARG takes one name[=default]")
        name, eq, default = words[0].partition("=")
        if not NAME_RE.match(name):
            raise InvalidRequest(f"line {line}: ARG name {name[:40]!r} is not a valid variable name")
        value: str | None = default if eq else None
        if name in self.build_args:
            value = self.build_args[name]
            self.used_args.add(name)
        self.args[name] = value or ""
        return ArgStep(line, name, value)

    def env_(self, line: int, rest: str) -> Step:
        lexer = _Lexer(line, self.variables(), self.budget)
        first, _, tail = rest.partition(" ")
        if "=" not in first:  # the legacy form: ENV KEY the rest of the line
            if not tail.strip():
                raise InvalidRequest(
                    f"line {line}: ENV {first[:40]} needs a value (ENV KEY VALUE or KEY=VALUE)"
                )
            pairs = [(first, lexer.word(tail.strip()))]
        else:
            pairs = []
            for word in lexer.words(rest):
                key, eq, value = word.partition("=")
                if not eq:
                    raise InvalidRequest(f"line {line}: ENV {word[:40]!r} is not KEY=VALUE")
                pairs.append((key, value))
        for key, value in pairs:
            if not NAME_RE.match(key):
                raise InvalidRequest(f"line {line}: ENV name {key[:40]!r} is not a valid variable name")
            self.env[key] = value
        try:  # every RUN step and every sandbox of the template carries this env: exec's bound
            validate_env(self.env)
        except InvalidRequest as e:
            raise InvalidRequest(f"line {line}: {e.message}") from None
        return EnvStep(line, tuple(pairs))

    def workdir_(self, line: int, rest: str) -> Step:
        path = _Lexer(line, self.variables(), self.budget).word(rest).strip()
        if not path:
            raise InvalidRequest(f"line {line}: WORKDIR needs a path")
        self.workdir = _normpath(posixpath.join(self.workdir or "/", path))
        if len(self.workdir.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
            # Relative WORKDIRs add up, and every later step holds the result.
            raise InvalidRequest(f"line {line}: WORKDIR is longer than {MAX_PATH_BYTES} bytes")
        return WorkdirStep(line, self.workdir)

    def user_(self, line: int, rest: str) -> Step:
        user = _Lexer(line, self.variables(), self.budget).word(rest).strip()
        if not USER_RE.match(user):
            raise InvalidRequest(f"line {line}: USER {user[:40]!r} is not a user name or uid (user[:group])")
        self.user = user
        return UserStep(line, user)

    def copy(self, line: int, rest: str) -> Step:
        argv = _json_form(line, rest)
        words = argv if argv is not None else _Lexer(line, self.variables(), self.budget).words(rest)
        for word in words:
            if not word.startswith("--"):
                break
            flag = word.split("=", 1)[0]
            if flag == "--chown" or flag == "--chmod":
                raise InvalidRequest(
                    f"line {line}: COPY {flag} is not supported (copied files are owned by root; "
                    "change owners with a RUN chown)"
                )
            raise InvalidRequest(f"line {line}: COPY {flag[:40]} is not supported")
        if len(words) < 2:
            raise InvalidRequest(f"line {line}: COPY needs a source and a destination")
        sources = tuple(self._copy_source(line, s) for s in words[:-1])
        dest_word = words[-1]
        dest = _normpath(posixpath.join(self.workdir or "/", dest_word))
        # The CP cannot look at the chain to see whether dest is a directory: a trailing `/`, `.`
        # or several sources say so (Docker's rule, which it relaxes by looking).
        last = dest_word.rstrip("/").rsplit("/", 1)[-1]
        dest_is_dir = dest_word.endswith("/") or last in (".", "..", "") or len(sources) > 1
        return CopyStep(line, sources, dest, dest_is_dir)

    @staticmethod
    def _copy_source(line: int, source: str) -> str:
        # A leading `/` means the context's root (as in Docker); `..` may not climb out of it.
        normal = posixpath.normpath(source.lstrip("/") or ".")
        if normal == ".." or normal.startswith("../"):
            raise InvalidRequest(f"line {line}: COPY source {source[:80]!r} is outside the build context")
        return normal

    def run(self, line: int, rest: str) -> Step:
        if rest.startswith("--"):
            raise InvalidRequest(f"line {line}: RUN {rest.split()[0][:40]} is not supported")
        return RunStep(line, _command(line, "RUN", rest), self.context())

    def start(self, line: int, rest: str) -> Step:
        self.start_cmd = _command(line, "START", rest)
        return StartStep(line, self.start_cmd)

    def ready(self, line: int, rest: str) -> Step:
        timeout = DEFAULT_READY_TIMEOUT_S
        m = re.match(r"--timeout=(\S+)\s*", rest)
        if m is not None:
            raw = m.group(1).removesuffix("s")
            if not raw.isdigit() or not 1 <= int(raw) <= MAX_READY_TIMEOUT_S:
                raise InvalidRequest(f"line {line}: READY --timeout must be 1..{MAX_READY_TIMEOUT_S} seconds")
            timeout, rest = int(raw), rest[m.end() :]
        elif rest.startswith("--"):
            raise InvalidRequest(f"line {line}: READY {rest.split()[0][:40]} is not supported")
        self.ready_cmd = _command(line, "READY", rest)
        self.ready_timeout = timeout
        return ReadyStep(line, self.ready_cmd, timeout)


_HANDLERS = {
    "FROM": _Parser.from_,
    "ARG": _Parser.arg,
    "ENV": _Parser.env_,
    "WORKDIR": _Parser.workdir_,
    "USER": _Parser.user_,
    "COPY": _Parser.copy,
    "RUN": _Parser.run,
    "START": _Parser.start,
    "CMD": _Parser.start,
    "READY": _Parser.ready,
}


def parse(source: str, build_args: dict[str, str] | None = None, base: SpecConfig | None = None) -> Spec:
    """Parse a Warrenfile. `build_args` override ARG defaults (each must be declared by an ARG);
    `base` is the FROM template's config, which the spec starts from (its env is substituted,
    its workdir resolves relative paths). A build parses once to check the request (no base)
    and again with the FROM template's config once it is resolved."""
    build_args = dict(build_args or {})
    if len(source.encode("utf-8", "surrogatepass")) > MAX_SPEC_BYTES:
        raise PayloadTooLarge(f"the spec is larger than {MAX_SPEC_BYTES // 1024} KiB")
    if "\x00" in source:
        raise InvalidRequest("the spec contains a NUL byte")
    _check_build_args(build_args)
    parser = _Parser(build_args, base)
    for line, text in _logical_lines(source):
        parser.instruction(line, text)
    if not parser.steps:
        raise InvalidRequest("the spec has no FROM")
    unused = sorted(set(build_args) - parser.used_args)
    if unused:
        raise InvalidRequest(f"build args not declared by an ARG: {', '.join(unused)}")
    config = SpecConfig(
        env=dict(parser.env),
        workdir=parser.workdir,
        user=parser.user,
        start_cmd=parser.start_cmd,
        ready_cmd=parser.ready_cmd,
        ready_timeout_sec=parser.ready_timeout,
    )
    return Spec(source=source, steps=parser.steps, config=config)
