"""The code registry (nightcore.codes) against the source and against docs/codes.md.

(a) docs/codes.md documents exactly the codes of each domain of the registry, with its meanings;
(b) every code string the source can raise or record is in the registry, found by parsing src/
    with ``ast`` (see :class:`CodeScanner` for the kinds of sites it reads);
(c) every registered code is raised or recorded somewhere (or listed in NOT_IN_SOURCE with why);
(d) README.md and the other docs name no code-like identifier that is not registered.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from nightcore import codes
from nightcore.aufs.errors import AUFS_CODES
from nightcore.codes import ALL_CODES, DOMAINS, RunCode, VerifyCode
from nightcore.errors import RUN_CODES, VERIFY_CODES

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src" / "nightcore"
DOC = REPO / "docs" / "codes.md"

CODE_RE = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*")
FIX = (
    "add it to the right StrEnum in src/nightcore/codes.py with its meaning, then its row to "
    "docs/codes.md (`python -m nightcore.codes` prints the tables)"
)

# Registered codes that no site of the source names in a way the scanner reads, and why.
NOT_IN_SOURCE = {
    "NOT_VERIFIED": "the dashboard's placeholder verdict (a dataclass default, `verdict: str`)",
}


# -- finding the codes in the source -----------------------------------------------------------


def _name_of(e: ast.expr) -> str:
    if isinstance(e, ast.Name):
        return e.id
    if isinstance(e, ast.Attribute):
        return e.attr
    return ""


def _is_code_name(name: str) -> bool:
    low = name.lower()
    return low == "code" or low.endswith(("_code", "codes"))


def _positional(args: ast.arguments) -> list[str]:
    return [a.arg for a in args.posonlyargs + args.args]


class CodeScanner:
    """Finds every code string in a source tree. A code is an upper-case identifier that is:

    1. the value of a ``code=`` keyword argument, or the default of a parameter named ``code``;
    2. assigned to a name or attribute called ``code``, ``*_code`` or ``*codes`` (class
       attributes ``code = "X"``, ``v.ok, v.code = False, "X"``, ``RUN_CODES = (...)``);
    3. passed positionally where a function or class of the tree takes ``code`` (``_deny("X")``,
       ``problem(409, "BUSY")``, ``Check(..., "FILE_MISSING")``, ``RunResult.refused("X")``);
    4. the value of a ``"code"`` key in a dict display (worker and node protocol frames);
    5. returned by a function whose name contains ``code`` or whose docstring begins
       ``(code,`` (``_trap_code``, ``host_error``).

    In each place the expression is read through conditionals, ``or``, operators, containers,
    dict values, call arguments (``codes.get(s, "HTTP_ERROR")``), module constants
    (``code=FFI_UNAVAILABLE``) and registry members (``VerifyCode.OK``).
    """

    def __init__(self, files: dict[str, str]) -> None:
        self.trees = {name: ast.parse(text, name) for name, text in files.items()}
        self.constants: dict[str, set[str]] = {}
        self.code_params: dict[str, set[int]] = {}
        for tree in self.trees.values():
            self._definitions(tree)

    @classmethod
    def of_dir(cls, root: Path) -> CodeScanner:
        return cls(
            {p.relative_to(root.parent).as_posix(): p.read_text() for p in root.rglob("*.py")}
        )

    def _takes_code(self, name: str, params: list[str]) -> None:
        if "code" in params:
            self.code_params.setdefault(name, set()).add(params.index("code"))

    def _definitions(self, tree: ast.Module) -> None:
        for stmt in tree.body:
            if (
                isinstance(stmt, ast.Assign)
                and isinstance(stmt.value, ast.Constant)
                and isinstance(stmt.value.value, str)
            ):
                for t in stmt.targets:
                    if isinstance(t, ast.Name):
                        self.constants.setdefault(t.id, set()).add(stmt.value.value)
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                fields = [
                    s.target.id
                    for s in node.body
                    if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
                ]
                init = next(
                    (
                        s
                        for s in node.body
                        if isinstance(s, ast.FunctionDef) and s.name == "__init__"
                    ),
                    None,
                )
                self._takes_code(node.name, _positional(init.args)[1:] if init else fields)
                for s in node.body:
                    if isinstance(s, ast.FunctionDef | ast.AsyncFunctionDef):
                        static = any(_name_of(d) == "staticmethod" for d in s.decorator_list)
                        self._takes_code(s.name, _positional(s.args)[0 if static else 1 :])
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                params = _positional(node.args)
                if not params or params[0] not in ("self", "cls"):
                    self._takes_code(node.name, params)

    def literals(self, e: ast.expr | None) -> Iterator[str]:
        if e is None:
            return
        if isinstance(e, ast.Constant):
            if isinstance(e.value, str):
                yield e.value
        elif isinstance(e, ast.IfExp):
            yield from self.literals(e.body)
            yield from self.literals(e.orelse)
        elif isinstance(e, ast.BoolOp):
            for v in e.values:
                yield from self.literals(v)
        elif isinstance(e, ast.BinOp):
            yield from self.literals(e.left)
            yield from self.literals(e.right)
        elif isinstance(e, ast.Tuple | ast.List | ast.Set):
            for v in e.elts:
                yield from self.literals(v)
        elif isinstance(e, ast.Dict):
            for v in e.values:
                yield from self.literals(v)
        elif isinstance(e, ast.Call):
            for a in e.args:
                yield from self.literals(a)
        elif isinstance(e, ast.Name):
            yield from sorted(self.constants.get(e.id, ()))
        elif isinstance(e, ast.Attribute) and isinstance(e.value, ast.Name):
            enum = getattr(codes, e.value.id, None)
            if isinstance(enum, type) and issubclass(enum, codes.Code):
                yield e.attr  # a member's name is its value (the registry test checks that)

    def scan(self) -> dict[str, list[str]]:
        """code -> the places ("file:line") that raise or record it."""
        found: dict[str, list[str]] = {}

        def add(e: ast.expr | None, where: str) -> None:
            for s in self.literals(e):
                if CODE_RE.fullmatch(s):
                    found.setdefault(s, []).append(where)

        for name, tree in self.trees.items():
            for node in ast.walk(tree):
                at = f"{name}:{getattr(node, 'lineno', 0)}"
                if isinstance(node, ast.Call):
                    for kw in node.keywords:
                        if kw.arg == "code":
                            add(kw.value, at)
                    for i in self.code_params.get(_name_of(node.func), ()):
                        if i < len(node.args):
                            add(node.args[i], at)
                elif isinstance(node, ast.Assign | ast.AnnAssign):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    for t in targets:
                        if isinstance(t, ast.Tuple) and isinstance(node.value, ast.Tuple):
                            for te, ve in zip(t.elts, node.value.elts, strict=False):
                                if _is_code_name(_name_of(te)):
                                    add(ve, at)
                        elif _is_code_name(_name_of(t)):
                            add(node.value, at)
                elif isinstance(node, ast.Dict):
                    for k, v in zip(node.keys, node.values, strict=True):
                        if isinstance(k, ast.Constant) and k.value == "code":
                            add(v, at)
                elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    a = node.args
                    pos = a.posonlyargs + a.args
                    for arg, default in zip(
                        pos[len(pos) - len(a.defaults) :], a.defaults, strict=True
                    ):
                        if arg.arg == "code":
                            add(default, at)
                    for arg, kwdefault in zip(a.kwonlyargs, a.kw_defaults, strict=True):
                        if arg.arg == "code":
                            add(kwdefault, at)
                    doc = ast.get_docstring(node) or ""
                    if "code" in node.name.lower() or doc.startswith("(code,"):
                        for r in ast.walk(node):
                            if isinstance(r, ast.Return) and r.value is not None:
                                v = r.value
                                if isinstance(v, ast.Tuple) and v.elts:
                                    v = v.elts[0]
                                add(v, at)
        return found


@pytest.fixture(scope="module")
def source_codes() -> dict[str, list[str]]:
    return CodeScanner.of_dir(SRC).scan()


SITES = textwrap.dedent(
    '''
    from nightcore.codes import VerifyCode
    FROM_CONSTANT = "C_CONSTANT"
    SOME_CODES = ("C_TUPLE_A", "C_TUPLE_B")

    class Err(Exception):
        code = "C_CLASS_ATTR"

    class Check:
        check: str
        ok: bool
        code: str = "C_FIELD_DEFAULT"

    class Denial:
        def __init__(self, code: str, reason: str) -> None: ...
        def refused(self, detail: str, code: str) -> None: ...

    def problem(status: int, code: str) -> None: ...
    def parse(data: bytes, *, code: str = "C_KW_DEFAULT") -> None: ...
    def _trap_code(x: int) -> str:
        return "C_RETURN_A" if x else "C_RETURN_B"
    def host_error(exc: Exception) -> tuple[str, str]:
        """(code, message) of a failure."""
        return "C_RETURN_TUPLE", "message"

    def f(v: object, ok: bool) -> None:
        raise Err("m", code="C_KEYWORD" if ok else "C_KEYWORD_ELSE")
        raise Err("m", code=FROM_CONSTANT)
        raise Err("m", code=VerifyCode.KEY_REVOKED)
        v.ok, v.code = False, "C_TUPLE_ASSIGN"
        code = "C_LOCAL"
        Check("c", False, "C_POSITIONAL_FIELD")
        Denial("C_INIT_ARG", "r")
        v.refused("d", "C_METHOD_ARG")
        problem(409, "C_FUNCTION_ARG")
        codes = {404: "C_DICT_VALUE"}
        problem(404, codes.get(404, "C_GET_DEFAULT"))
        send({"op": "error", "code": "C_FRAME"})
        untouched = "NOT_A_CODE"
        other(401, "NOT_A_CODE_EITHER", metavar="ACTION")
    '''
)


def test_the_scanner_reads_every_kind_of_site() -> None:
    found = CodeScanner({"sites.py": SITES}).scan()
    expected = {
        "C_CONSTANT", "C_TUPLE_A", "C_TUPLE_B", "C_CLASS_ATTR", "C_FIELD_DEFAULT", "C_KW_DEFAULT",
        "C_RETURN_A", "C_RETURN_B", "C_RETURN_TUPLE", "C_KEYWORD", "C_KEYWORD_ELSE",
        "KEY_REVOKED", "C_TUPLE_ASSIGN", "C_LOCAL", "C_POSITIONAL_FIELD", "C_INIT_ARG",
        "C_METHOD_ARG", "C_FUNCTION_ARG", "C_DICT_VALUE", "C_GET_DEFAULT", "C_FRAME",
    }  # fmt: skip
    assert set(found) == expected, (sorted(expected - set(found)), sorted(set(found) - expected))
    line = SITES.splitlines().index('    problem(409, "C_FUNCTION_ARG")') + 1
    assert found["C_FUNCTION_ARG"] == [f"sites.py:{line}"]


def test_every_code_the_source_raises_or_records_is_registered(
    source_codes: dict[str, list[str]],
) -> None:
    missing = {c: where for c, where in source_codes.items() if c not in ALL_CODES}
    assert not missing, "codes the source uses that nightcore.codes lacks ({}):\n{}".format(
        FIX,
        "\n".join(
            f"  {c}: raised or recorded at {', '.join(w[:3])}" for c, w in sorted(missing.items())
        ),
    )


def test_every_registered_code_is_used_by_the_source(source_codes: dict[str, list[str]]) -> None:
    unused = sorted(set(ALL_CODES) - set(source_codes) - set(NOT_IN_SOURCE))
    assert not unused, (
        f"nightcore.codes registers codes no source file raises or records: {unused} "
        "(remove them, or list them in NOT_IN_SOURCE with the reason)"
    )
    stale = sorted(c for c in NOT_IN_SOURCE if c in source_codes or c not in ALL_CODES)
    assert not stale, f"NOT_IN_SOURCE entries that are found in src/ or not registered: {stale}"


# -- the registry ------------------------------------------------------------------------------


def test_registry_members_are_their_strings_with_one_line_meanings() -> None:
    assert len({d.name for d in DOMAINS}) == len({d.title for d in DOMAINS}) == len(DOMAINS)
    for d in DOMAINS:
        for m in d.codes:
            where = f"{d.codes.__name__}.{m.name}"
            assert m.value == m.name and CODE_RE.fullmatch(m.value), where
            meaning = m.meaning
            assert meaning and meaning == " ".join(meaning.split()), f"{where}: one line, please"
            assert "|" not in meaning, f"{where}: '|' would break the docs table"
    assert VerifyCode.OK == "OK" and RunCode("TRAP") is RunCode.TRAP
    assert json.dumps({"code": VerifyCode.KEY_REVOKED}) == '{"code": "KEY_REVOKED"}'
    assert f"error[{VerifyCode.DIGEST_MISMATCH}]" == "error[DIGEST_MISMATCH]"
    assert [i.domain for i in ALL_CODES["OK"]] == ["verify", "run", "aufs"]
    assert all(CODE_RE.fullmatch(c) for c in ALL_CODES)


def test_the_old_code_tuples_are_registry_domains() -> None:
    assert set(VERIFY_CODES) == set(VerifyCode)
    assert set(RUN_CODES) <= set(RunCode)
    assert set(AUFS_CODES) <= set(codes.AufsCode)


def test_importing_errors_does_not_build_the_registry() -> None:
    # nightcore.errors is on the CLI's cold path; the registry's enums are not.
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, nightcore.errors; print('nightcore.codes' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "False"


# -- docs/codes.md -----------------------------------------------------------------------------

ROW = re.compile(r"^\|\s*(?P<codes>`[^|]*`)\s*\|\s*(?P<meaning>.*?)\s*\|\s*$")


def documented(text: str) -> tuple[dict[str, dict[str, str]], list[str]]:
    """{section title: {code: meaning}} of the tables in docs/codes.md, and the problems seen."""
    sections: dict[str, dict[str, str]] = {}
    problems: list[str] = []
    title = ""
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("## "):
            title = line[3:].strip()
            if title in sections:
                problems.append(f"docs/codes.md:{n}: section {title!r} appears twice")
            sections[title] = {}
            continue
        m = ROW.match(line)
        if m is None:
            continue
        names = re.findall(r"`([^`]*)`", m["codes"])
        if not title:
            problems.append(f"docs/codes.md:{n}: a code row before the first section")
            continue
        for code in names:
            if code in sections[title]:
                problems.append(f"docs/codes.md:{n}: {code} twice in section {title!r}")
            sections[title][code] = m["meaning"]
    return sections, problems


def doc_problems(text: str) -> list[str]:
    """What in ``text`` (docs/codes.md) disagrees with the registry, one message per problem."""
    sections, problems = documented(text)
    titles = {d.title: d for d in DOMAINS}
    for title in sections:
        if title not in titles:
            problems.append(
                f"docs/codes.md section {title!r} is no domain of nightcore.codes.DOMAINS "
                f"(the sections are: {', '.join(repr(t) for t in titles)})"
            )
    for d in DOMAINS:
        doc = sections.get(d.title)
        if doc is None:
            problems.append(f"docs/codes.md lacks the section '## {d.title}' ({d.codes.__name__})")
            continue
        for code, meaning in doc.items():
            if code not in d.codes.__members__:
                where = [i.domain for i in ALL_CODES.get(code, ())]
                problems.append(
                    f"docs/codes.md section {d.title!r} documents {code}, which "
                    f"nightcore.codes.{d.codes.__name__} lacks"
                    + (f" (it is registered in: {', '.join(where)})" if where else f"; {FIX}")
                )
            elif meaning != d.codes[code].meaning:
                problems.append(
                    f"docs/codes.md section {d.title!r}, {code}: the meaning differs from "
                    f"nightcore.codes.{d.codes.__name__}.{code}.meaning\n"
                    f"    docs: {meaning}\n    code: {d.codes[code].meaning}"
                )
        for m in d.codes:
            if m.value not in doc:
                problems.append(
                    f"nightcore.codes.{d.codes.__name__}.{m.name} is not documented in "
                    f"docs/codes.md section {d.title!r}: add the row | `{m.value}` | {m.meaning} |"
                )
    return problems


def test_docs_document_exactly_the_registry() -> None:
    problems = doc_problems(DOC.read_text())
    assert not problems, "\n".join(problems)


def test_the_docs_checker_names_each_missing_extra_or_changed_row() -> None:
    text = "# Codes\n\nProse is ignored.\n\n" + codes.markdown_tables()
    assert doc_problems(text) == []
    broken = (
        text.replace("| `KEY_EXPIRED` |", "| `KEY_EXPIRD` |")
        .replace("the fuel budget ran out", "fuel")
        .replace(f"## {DOMAINS[-1].title}", "## Nodes")
    )
    problems = doc_problems(broken)
    assert any("documents KEY_EXPIRD, which nightcore.codes.VerifyCode" in p for p in problems)
    assert any("VerifyCode.KEY_EXPIRED is not documented" in p for p in problems), problems
    assert any("FUEL_EXHAUSTED: the meaning differs" in p for p in problems), problems
    assert any("section 'Nodes' is no domain" in p for p in problems), problems
    assert any(f"lacks the section '## {DOMAINS[-1].title}'" in p for p in problems), problems
    assert len(problems) == 5, problems


def code_like(token: str) -> bool:
    """Looks like a code: two or more words, the first or last of which starts or ends at least
    three registered codes (``AUDIT_...``, ``..._INVALID``); ``RLIMIT_AS``, ``O_NOFOLLOW`` or
    ``NIGHTCORE_HOME`` do not."""
    words = token.split("_")
    if len(words) < 2 or not CODE_RE.fullmatch(token):
        return False
    firsts = [c.split("_")[0] for c in ALL_CODES]
    lasts = [c.split("_")[-1] for c in ALL_CODES]
    return firsts.count(words[0]) >= 3 or lasts.count(words[-1]) >= 3


def test_the_other_docs_name_only_registered_codes() -> None:
    stale = [
        f"{path.relative_to(REPO)}:{n}: `{token}`"
        for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
        for n, line in enumerate(path.read_text().splitlines(), 1)
        for token in re.findall(r"`([A-Z][A-Z0-9_]*)`", line)
        if code_like(token) and token not in ALL_CODES
    ]
    assert not stale, "documents name codes nightcore.codes does not register:\n" + "\n".join(stale)
    assert code_like("AUDIT_LINE_GONE") and code_like("TENANT_BROKEN_INVALID")
    assert not any(map(code_like, ["RLIMIT_AS", "O_NOFOLLOW", "NIGHTCORE_HOME", "PR_SET_NAME"]))
