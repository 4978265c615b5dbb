"""Cheap drift checks between the docs and the code, without a server.

What goes in: the Markdown under docs/ and the README. What is asserted:
every condition and admission reason has a troubleshooting section, every
fenced YAML block parses, every command the README's quick start and the docs
show names a real make target, CLI subcommand, kubectl verb, resource and file,
relative links resolve, and every output the docs mark for checking is
checked by the e2e example test.
"""

from __future__ import annotations

import itertools
import re
import shlex
from pathlib import Path

import pytest
import yaml

from secretgrants.cli import build_parser
from secretgrants.reasons import Reason
from tests.conftest import REPO

DOCS = sorted((REPO / "docs").glob("*.md"))
FENCE = re.compile(r"^```(\S*)[^\n]*\n(.*?)^```", re.S | re.M)
CHECK = re.compile(r"<!-- check: ([a-z0-9-]+)(?: \(excerpt\))? -->")
SOURCES = REPO / "operator" / "secretgrants"
# The modules that refuse pods (AdmissionDenied with a reason), as troubleshooting.md names them.
ADMISSION_MODULES = (
    "admission.py",
    "injection.py",
    "pod_mutation.py",
    "secret_use.py",
    "uses.py",
    "webhook.py",
)
# The AdmissionDenied("Reason", ...) calls; the reason may be on the next line.
ADMISSION_REASON = re.compile(r'AdmissionDenied\(\s*(?:\n\s*)?"([A-Za-z]+)"')
KUBECTL_VERBS = {
    "apply", "create", "delete", "describe", "explain", "get", "logs", "scale", "wait",
    "kustomize", "rollout", "auth", "label", "annotate", "edit", "patch",
}  # fmt: skip
OUR_RESOURCES = {
    "sgr", "sgt", "secretgrants", "secretgrantrequest", "secretgrantrequests",
    "secrettenant", "secrettenants",
}  # fmt: skip


def blocks(text: str, lang: str | None = None) -> list[str]:
    return [body for kind, body in FENCE.findall(text) if lang is None or kind == lang]


def section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start : end if end != -1 else None]


def admission_reasons() -> set[str]:
    found: set[str] = set()
    for name in ADMISSION_MODULES:
        found |= set(ADMISSION_REASON.findall((SOURCES / name).read_text()))
    return found


def test_admission_reasons_are_found() -> None:
    # guards the regex above: if it stops finding these, the next test proves nothing
    assert {"ServiceAccountMismatch", "DirectMountNotAllowed", "UsesExhausted"} <= (
        admission_reasons()
    )


@pytest.mark.parametrize("reason", sorted({r.value for r in Reason} | admission_reasons()))
def test_every_reason_has_a_troubleshooting_section(reason: str) -> None:
    text = (REPO / "docs" / "troubleshooting.md").read_text()
    assert f"\n### `{reason}`\n" in text, f"docs/troubleshooting.md needs a section ### `{reason}`"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_yaml_block_parses(doc: Path) -> None:
    for body in blocks(doc.read_text(), "yaml"):
        docs = [d for d in yaml.safe_load_all(body) if d is not None]
        assert docs and all(isinstance(d, dict) for d in docs), body


def _commands(text: str) -> list[list[str]]:
    out = []
    for body in blocks(text, "sh"):
        for line in body.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if not line or line.startswith("#") or line.startswith("export "):
                continue
            first = line.split("|")[0]  # the command before any pipe
            out.append(shlex.split(first.replace("<", "_").replace(">", "_")))
    return out


def _make_targets() -> set[str]:
    makefile = (REPO / "Makefile").read_text()
    return set(re.findall(r"^([a-z][\w-]*):", makefile, re.M))


def _check_command(argv: list[str]) -> None:
    subcommands = set(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    tool, args = argv[0], argv[1:]
    if tool == "make":
        assert set(args) <= _make_targets(), argv
    elif tool == "secretgrants" or args[:1] == ["secretgrants"]:
        sub = args[1] if tool == "kubectl" else args[0]
        assert sub in subcommands, f"{argv}: no such secretgrants subcommand"
    elif tool == "kubectl":
        words = [a for a in args if not a.startswith("-")]
        assert words and words[0] in KUBECTL_VERBS, f"{argv}: unexpected kubectl verb"
        for arg in args:
            kind = arg.split("/")[0].split(".")[0]
            if kind in OUR_RESOURCES or kind.startswith("sgr"):
                assert kind in OUR_RESOURCES, f"{argv}: unknown resource {kind!r}"
        for flag, value in itertools.pairwise(args):
            if flag in ("-f", "-k") and value not in ("-",):
                assert (REPO / value).exists(), f"{argv}: {value} does not exist"
    elif tool == "helm":
        assert (REPO / args[2]).exists(), argv
    else:
        raise AssertionError(f"{argv}: a command the docs should not need")


def test_readme_quick_start_commands_exist() -> None:
    quick = section((REPO / "README.md").read_text(), "## Quick start")
    commands = _commands(quick)
    assert [c[:2] for c in commands[:2]] == [["make", "dev"], ["make", "test"]]
    assert sum(1 for c in commands if c[0] == "make") == 2, "the quick start is two commands"
    for argv in commands:
        _check_command(argv)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_command_in_the_docs_exists(doc: Path) -> None:
    for argv in _commands(doc.read_text()):
        if argv[0] == "helm":  # helm install NAME CHART ...
            assert (REPO / argv[3]).exists(), argv
            continue
        _check_command(argv)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(doc: Path) -> None:
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
        if "://" in target:
            continue
        assert (doc.parent / target).resolve().exists(), f"{doc.name}: broken link {target}"


def test_every_checked_output_is_checked_by_the_e2e_test() -> None:
    """walkthrough.md's markers are all compared by its runner (which asserts it saw each);
    markers elsewhere are handled by name in the e2e test."""
    e2e = (REPO / "tests" / "e2e" / "test_examples.py").read_text()
    assert "assert checked == {key for key, _ in MARKER.findall(text)}" in e2e
    keys = [k for doc in DOCS for k in CHECK.findall(doc.read_text())]
    assert keys and len(keys) == len(set(keys)), "check markers must exist and be unique"
    for doc in DOCS:
        if doc.name != "walkthrough.md":
            for key in CHECK.findall(doc.read_text()):
                assert f'b.check == "{key}"' in e2e, f"{doc.name}: {key} is checked by no test"
