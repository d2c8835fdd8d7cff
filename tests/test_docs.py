"""The documentation holds together: every setting documented once in docs/configuration.md with its real
default, every relative link and anchor resolves, the README fits a screen, the CHANGELOG names this version."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from urllib.parse import unquote

import pytest

from ninkik_tasks.config import SCRIPT_VARIABLES, Settings, known_variables

ROOT = Path(__file__).resolve().parent.parent
CONFIGURATION = ROOT / "docs" / "configuration.md"
# boto3's per-service endpoints, which docs/configuration.md offers next to AWS_ENDPOINT_URL; .env.example names
# the other AWS variables.
AWS_ENDPOINTS = {"AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL_ECR"}
README_MAX_LINES = 150

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEFINITION = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
VARIABLE_CELL = re.compile(r"^`([A-Z][A-Z0-9_]*)`$")
LITERAL_CELL = re.compile(r"^`([^`]*)`$")
SCRIPT_DEFAULT = re.compile(r"\$\{(\w+):-([^}]*)\}")


def _pages() -> list[Path]:
    return [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]


def _prose(text: str) -> list[str]:
    """The lines outside fenced code blocks (code blocks hold neither links nor headings)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        lines.append("" if fenced else line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text (github-slugger): markup dropped, lowercased, punctuation but `-` and
    `_` removed, each space a hyphen."""
    text = INLINE_LINK.sub(lambda m: m.group(0)[1 : m.group(0).index("](")], heading)
    text = CODE_SPAN.sub(lambda m: m.group(2), text)
    text = re.sub(r"<[^>]+>", "", text)
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor GitHub renders for the page's headings (repeats get -1, -2 ...)."""
    found: set[str] = set()
    counts: dict[str, int] = {}
    for line in _prose(path.read_text()):
        if match := HEADING.match(line):
            base = slug(match.group(2))
            n = counts.get(base, 0)
            counts[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    """Each relative link or #anchor of the page that leads nowhere, as `page: target (why)`."""
    problems = []
    for line in _prose(path.read_text()):
        line = CODE_SPAN.sub("", line)
        targets = [m.group(1) for m in INLINE_LINK.finditer(line)]
        if definition := REFERENCE_DEFINITION.match(line):
            targets.append(definition.group(1))
        for target in targets:
            if not target or SCHEME.match(target) or target.startswith("//"):
                continue
            where, _, anchor = target.partition("#")
            page = (path.parent / unquote(where)).resolve() if where else path
            name = f"{path.relative_to(root)}: {target}"
            if not page.exists():
                problems.append(f"{name} (no such file)")
            elif not page.is_relative_to(root):
                problems.append(f"{name} (outside the repository)")
            elif anchor and page.suffix != ".md":
                problems.append(f"{name} (an anchor into a file that is not Markdown)")
            elif anchor and anchor not in anchors(page):
                problems.append(f"{name} (no heading with that anchor in {page.relative_to(root)})")
    return problems


def documented_variables(path: Path) -> list[str]:
    """The variables of the page's tables: rows whose first cell is a `NAME` in backticks, in order."""
    names = []
    for line in _prose(path.read_text()):
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.lstrip().startswith("|") and (match := VARIABLE_CELL.match(cells[0])):
            names.append(match.group(1))
    return names


def _default_cells(path: Path) -> dict[str, str]:
    """Variable -> its default, for the rows whose default cell is one literal in backticks."""
    out = {}
    for line in _prose(path.read_text()):
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and (name := VARIABLE_CELL.match(cells[0])) and (value := LITERAL_CELL.match(cells[1])):
            out[name.group(1)] = value.group(1)
    return out


def _wanted_variables() -> set[str]:
    """What an operator may set: the package's known variables, AWS's (Settings' aliases, those .env.example names,
    the per-service endpoints) and the variables docker-compose.yml interpolates."""
    aliases = {
        str(choice)
        for field in Settings.model_fields.values()
        if field.validation_alias is not None
        for choice in getattr(field.validation_alias, "choices", [field.validation_alias])
    }
    env_example = set(re.findall(r"^#?\s*(AWS_[A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.MULTILINE))
    compose = set(re.findall(r"(?<!\$)\$\{(\w+)", (ROOT / "docker-compose.yml").read_text()))
    return set(known_variables()) | aliases | env_example | AWS_ENDPOINTS | compose


def _version() -> str:
    version: str = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    return version


# docs/configuration.md


def test_configuration_documents_every_variable_once() -> None:
    documented = documented_variables(CONFIGURATION)
    wanted = _wanted_variables()
    assert sorted(wanted - set(documented)) == [], "missing from docs/configuration.md"
    assert sorted({name for name in documented if documented.count(name) > 1}) == [], "documented twice"
    assert sorted(set(documented) - wanted) == [], "documented, but nothing reads it"


def test_configuration_shows_the_real_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in list(os.environ):
        if var.startswith("NINKIK_"):
            monkeypatch.delenv(var)
    defaults = Settings()
    fields = {"NINKIK_" + name.upper(): name for name, f in Settings.model_fields.items() if f.validation_alias is None}
    scripts = {
        var: default
        for script in [*(ROOT / "workers").glob("*.sh"), *(ROOT / "beat").glob("*.sh")]
        for var, default in SCRIPT_DEFAULT.findall(script.read_text())
    }
    shown = _default_cells(CONFIGURATION)
    checked = 0
    for var, value in shown.items():
        if var in fields:
            field = fields[var]
            assert getattr(Settings(**{field: value}), field) == getattr(defaults, field), f"{var}: shows {value!r}"
            checked += 1
        elif var in SCRIPT_VARIABLES:
            assert scripts[var] == value, f"{var}: shows {value!r}, the scripts use {scripts[var]!r}"
            checked += 1
    assert checked >= 30, f"only {checked} defaults could be read: keep them as one `literal` each"


def test_settings_are_documented_in_configuration_md_alone() -> None:
    wanted = _wanted_variables()
    for page in _pages():
        if page != CONFIGURATION:
            settings = [name for name in documented_variables(page) if name in wanted]
            assert settings == [], f"{page.name}: a table of settings, which docs/configuration.md alone holds"


# Links


def test_every_relative_link_and_anchor_resolves() -> None:
    assert [problem for page in _pages() for problem in broken_links(page)] == []


def test_github_slugs() -> None:
    assert slug("Sweeps under the guide's IAM policy") == "sweeps-under-the-guides-iam-policy"
    assert slug("An image index (multi-platform)") == "an-image-index-multi-platform"
    assert slug("With `ecr:BatchGetImage`") == "with-ecrbatchgetimage"
    assert slug("`NINKIK_API_URL` and [the API](api.md)") == "ninkik_api_url-and-the-api"
    assert slug("Backfill, reconcile and rescan") == "backfill-reconcile-and-rescan"


def test_broken_links_are_found(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Title\n\n## Part one\n\n## Part one\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Here\n\n[ok](other.md#part-one) [ok](other.md#part-one-1) [ok](#here) [ok](https://example.com/x)\n"
        "`[in code](nowhere.md)`\n```\n[in a block](nowhere.md)\n```\n"
        "[gone](missing.md) [bad anchor](other.md#part-two) [bad local](#there)\n[ref]: missing-too.md\n"
    )
    assert broken_links(page, tmp_path) == [
        "page.md: missing.md (no such file)",
        "page.md: other.md#part-two (no heading with that anchor in other.md)",
        "page.md: #there (no heading with that anchor in page.md)",
        "page.md: missing-too.md (no such file)",
    ]


# The README and the CHANGELOG


def test_readme_fits_a_screen_or_two() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines: move reference into docs/"


def test_changelog_has_unreleased_and_this_version() -> None:
    headings = [line for line in (ROOT / "CHANGELOG.md").read_text().splitlines() if line.startswith("## ")]
    assert headings[0] == "## [Unreleased]", "contract changes go under Unreleased, at the top"
    assert any(re.fullmatch(rf"## \[{re.escape(_version())}\] - \d{{4}}-\d{{2}}-\d{{2}}", h) for h in headings), (
        f"no section for {_version()} (pyproject.toml's version)"
    )


# The aws CLI's own options, besides each operation's input members.
AWS_CLI_GLOBAL_OPTIONS = {"query", "output", "region", "profile", "no-paginate", "max-items", "page-size", "debug"}
AWS_COMMAND = re.compile(r"(?<![\w-])aws ([a-z][a-z0-9-]*) ([a-z][a-z0-9-]*)([^`]*)")


def test_aws_cli_commands_in_the_docs_are_real_operations_with_real_options() -> None:
    """Every `aws <service> <operation> --option` the docs give exists in botocore's model of that service (the
    models the aws CLI is built on): the runbook's Amazon MQ and ElastiCache steps, the EKS commands."""
    import botocore.session
    from botocore import xform_name

    session = botocore.session.get_session()
    checked = 0
    for page in _pages():
        text = " ".join(page.read_text().split())
        for service, operation, rest in AWS_COMMAND.findall(text):
            model = session.get_service_model(service)
            operations = {xform_name(name, "-"): name for name in model.operation_names}
            assert operation in operations, f"{page.name}: aws {service} {operation} is no operation"
            members = model.operation_model(operations[operation]).input_shape.members
            allowed = {xform_name(m, "-") for m in members} | AWS_CLI_GLOBAL_OPTIONS
            for option in re.findall(r"(?<!\S)--([a-z][a-z-]*)", rest.split(" | ")[0]):
                assert option in allowed, f"{page.name}: aws {service} {operation} has no --{option}"
            checked += 1
    assert checked >= 8, checked
