# SPDX-License-Identifier: GPL-3.0-or-later
"""The Sphinx site in docs/: it builds without a warning, its pages render, its links resolve.

The site is built once, into a temporary folder, with the venv's Sphinx and
warnings as errors (what ``make docs`` does). The built pages are then read
as a reader gets them: every internal link and ``#anchor`` must lead
somewhere, and headless Chromium (Debian package ``chromium``) must render
the API reference with its members. Only the Chromium checks skip, when
Chromium is not installed.
"""

from __future__ import annotations

import argparse
import html
import html.parser
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest

from orthanc_py.cli import build_parser

from .conftest import EXAMPLES, REPO

DOCS = REPO / "docs"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The HTML site, built from docs/ with ``sphinx-build -W --keep-going``."""
    try:
        import sphinx  # noqa: F401
        import sphinxarg  # type: ignore[import-untyped]  # noqa: F401
    except ImportError as error:
        pytest.fail(f"{error}: the docs need the test extras (pip install -e '.[test]')")
    out = tmp_path_factory.mktemp("docs") / "html"
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", str(DOCS), str(out)],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert result.returncode == 0, f"sphinx-build failed:\n{result.stdout[-3000:]}\n{result.stderr}"
    assert "WARNING" not in result.stderr, result.stderr
    return out


class _PageParser(html.parser.HTMLParser):
    """Collects the ids (anchors) a page defines and the links it makes."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for name in ("id", "name") if tag == "a" else ("id",):
            if values.get(name):
                self.ids.add(values[name])  # type: ignore[arg-type]
        for name in ("href", "src"):
            if values.get(name) and tag in ("a", "link", "script", "img", "iframe"):
                self.links.append(values[name])  # type: ignore[arg-type]


def _parse(page: Path) -> _PageParser:
    parser = _PageParser()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


def _pages(site: Path) -> list[Path]:
    return sorted(site.rglob("*.html"))


def test_every_page_is_built(site: Path) -> None:
    built = {p.relative_to(site).as_posix() for p in _pages(site)}
    sources = {p.relative_to(DOCS).with_suffix(".html").as_posix() for p in DOCS.rglob("*.rst")
               if "_build" not in p.parts}
    assert sources <= built, f"pages not built: {sorted(sources - built)}"


def test_every_internal_link_resolves(site: Path) -> None:
    parsed = {page.resolve(): _parse(page) for page in _pages(site)}
    broken = []
    for page, parser in parsed.items():
        for link in parser.links:
            url = urllib.parse.urlsplit(link)
            if url.scheme or url.netloc or link.startswith("//"):
                continue  # external: not this site's to check
            target = (page.parent / urllib.parse.unquote(url.path)).resolve() if url.path else page
            where = f"{page.relative_to(site.resolve())}: {link}"
            if not target.exists():
                broken.append(f"{where} (no file {target})")
                continue
            if target.is_dir():
                broken.append(f"{where} (a folder, not a page)")
                continue
            if url.fragment and target.suffix == ".html":
                ids = parsed[target].ids if target in parsed else _parse(target).ids
                if urllib.parse.unquote(url.fragment) not in ids:
                    broken.append(f"{where} (no #{url.fragment} in {target.name})")
    assert not broken, "broken internal links:\n" + "\n".join(broken)


def test_api_reference_lists_the_decorator_api(site: Path) -> None:
    ids = _parse(site / "api" / "orthanc_py.html").ids
    expected = [
        "route", "add_route", "Request", "Response", "abort", "HTTPError", "run_in_worker",
        "on_change", "on_stored_instance", "on_startup", "on_shutdown", "Change", "StoredInstance",
        "ChangeType", "ResourceType", "InstanceOrigin", "rest.get", "rest.post", "rest.RestError",
        "server.OrthancServer", "http_filter", "on_received_instance", "testing.orthanc", "testing.orthanc_factory",
    ]
    missing = [name for name in expected if f"orthanc_py.{name}" not in ids]
    assert not missing, f"not in the API reference: {missing}"


def test_api_reference_shows_no_constructor_a_script_never_calls(site: Path) -> None:
    # Request, StoredInstance... are made by orthanc_py: their signatures in
    # the reference are their names alone, not orthanc_py's internal parameters.
    text = (site / "api" / "orthanc_py.html").read_text(encoding="utf-8")
    for name, keyword in [("Request", "class"), ("FilterRequest", "class"), ("Change", "class"),
                          ("StoredInstance", "class"), ("ReceivedInstance", "class"), ("rest.RestError", "exception")]:
        start = text.index(f'id="orthanc_py.{name}"')
        signature = re.sub(r"<[^>]+>", "", text[start:text.index("</dt>", start)]).split(">", 1)[1]
        assert signature.strip() == f"{keyword} orthanc_py.{name}¶", signature
    # What a script does build keeps its parameters.
    start = text.index('id="orthanc_py.Response"')
    assert "status: int = 200" in re.sub(r"<[^>]+>", "", text[start:text.index("</dt>", start)])


def test_orthanc_module_reference_lists_its_members(site: Path) -> None:
    import orthanc

    ids = _parse(site / "api" / "orthanc.html").ids
    missing = [name for name in orthanc.__all__ if f"orthanc.{name}" not in ids]
    assert not missing, f"members of the orthanc module not in its reference: {missing}"
    for member in ("RegisterRestCallback", "RestOutput.AnswerBuffer", "ChangeType.ORTHANC_STARTED"):
        assert f"orthanc.{member}" in ids


def test_cli_reference_is_generated_from_the_parser(site: Path) -> None:
    text = (site / "cli.html").read_text(encoding="utf-8")
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in subparsers.choices.items():
        assert f'id="{name}"' in text, f"no section for `orthanc-py {name}`"
        for action in command._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert option in text, f"`orthanc-py {name} {option}` is not documented"


def test_tutorial_includes_every_decorator_example(site: Path) -> None:
    text = (site / "tutorial.html").read_text(encoding="utf-8")
    for example in sorted((EXAMPLES / "decorators").glob("*.py")):
        assert f"examples/decorators/{example.name}" in text, f"{example.name} is not in the tutorial"


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("Chromium is not installed (Debian: apt-get install chromium); CI installs it")


def _rendered_dom(page: Path, tmp_path: Path, *flags: str) -> str:
    profile = tmp_path / f"chromium-{page.stem}"
    result = subprocess.run(
        [_chromium(), *CHROMIUM_FLAGS, *flags, f"--user-data-dir={profile}", "--dump-dom", page.resolve().as_uri()],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    assert result.returncode == 0, f"chromium failed on {page}:\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.mark.parametrize(
    "page, title, wanted",
    [
        ("index.html", "orthanc_py", ["Quickstart", "API reference"]),
        ("api/orthanc_py.html", "API reference", ["route", "add_route", "run_in_worker", "OrthancServer"]),
        ("api/orthanc.html", "orthanc", ["RegisterRestCallback", "AnswerBuffer", "LogWarning"]),
        ("cli.html", "CLI reference", ["plugin-path", "--http-port", "doctor"]),
    ],
)
def test_pages_render_in_chromium(site: Path, tmp_path: Path, page: str, title: str, wanted: list[str]) -> None:
    dom = _rendered_dom(site / page, tmp_path)
    assert "<title>" in dom and title in dom.split("<title>", 1)[1].split("</title>", 1)[0], dom[:2000]
    parser = _PageParser()
    parser.feed(dom)
    missing = [word for word in wanted if word not in dom]
    assert not missing, f"{page} rendered without {missing}"
    if page == "api/orthanc_py.html":
        assert "orthanc_py.route" in parser.ids
    if page == "api/orthanc.html":
        assert "orthanc.RegisterRestCallback" in parser.ids


def test_readme_tables_are_whole() -> None:
    # A table row after a paragraph is no row: Markdown shows it as raw text with its pipes.
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    orphans = []
    for number, line in enumerate(lines):
        if not line.startswith("|"):
            continue
        start = number
        while start > 0 and lines[start - 1].startswith("|"):
            start -= 1
        if not (start + 1 < len(lines) and re.fullmatch(r"\|(\s*:?-{3,}:?\s*\|)+", lines[start + 1])):
            orphans.append(f"README.md:{number + 1}: {line[:60]}")
    assert not orphans, "table rows outside a table:\n" + "\n".join(orphans)


def test_the_pytest_kit_says_how_to_install_pytest(site: Path) -> None:
    text = re.sub(r"<[^>]+>", "", (site / "api" / "orthanc_py.html").read_text(encoding="utf-8"))
    assert "pip install 'orthanc-py[testing]'" in text
    assert "pip install 'orthanc-py[testing]'" in (REPO / "README.md").read_text(encoding="utf-8")


def _signature(text: str, name: str) -> str:
    start = text.index(f'id="{name}"')
    return html.unescape(re.sub(r"<[^>]+>", "", text[start:text.index("</dt>", start)]).split(">", 1)[1]).strip()


def test_api_reference_shows_what_a_test_gets_from_the_fixtures(site: Path) -> None:
    text = (site / "api" / "orthanc_py.html").read_text(encoding="utf-8")
    # Not the fixtures' own parameters (other fixtures: request, tmp_path_factory...), which a test never passes.
    assert _signature(text, "orthanc_py.testing.orthanc") == "orthanc_py.testing.orthanc() → OrthancServer¶"
    assert _signature(text, "orthanc_py.testing.orthanc_factory") == (
        "orthanc_py.testing.orthanc_factory(script=None, config=None, start=True, **options) → OrthancServer¶")
    assert "tmp_path_factory" not in _signature(text, "orthanc_py.testing.orthanc_cluster_factory")
    # Right after the fixtures, the server's methods a test calls first, before the rest of the page.
    order = ["testing.orthanc", "testing.orthanc_factory", "server.OrthancServer", "server.OrthancServer.get",
             "server.OrthancServer.get_json", "server.OrthancServer.upload", "server.OrthancServer.wait_for_log",
             "server.OrthancServer.wait_until", "server.OrthancServer.start", "testing.orthanc_cluster_factory",
             "cluster.claim"]
    positions = [text.index(f'id="orthanc_py.{name}"') for name in order]
    assert positions == sorted(positions), dict(zip(order, positions))


def _commands(page: str) -> list[str]:
    """The shell lines of a page's ``code-block:: sh`` blocks."""
    text = (DOCS / page).read_text(encoding="utf-8")
    blocks = re.findall(r"^\.\. code-block:: sh\n\n((?:   .*\n|\n)+)", text, re.M)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_quickstart_and_tutorial_run_scripts_the_same_way() -> None:
    for page in ("quickstart.rst", "tutorial.rst"):
        runs = [line for line in _commands(page) if " run " in line and "orthanc-py" in line]
        in_checkout = 0
        for line in runs:
            command, _, comment = line.partition("#")
            script = command.split(" run ", 1)[1].strip()
            assert command.startswith("~/orthanc-venv/bin/orthanc-py run "), f"{page}: {line}"
            if "checkout" in comment:
                assert comment.strip() == f"or, in a checkout: make run SCRIPT={script}", f"{page}: {line}"
                in_checkout += 1
        assert in_checkout, f"{page} does not say how to run a script in a checkout"


def test_the_quickstarts_upload_stores_pydicoms_sample_file(make_orthanc) -> None:
    # The commands as printed, with this venv's Python and a test Orthanc's port.
    server = make_orthanc(script=None)
    lines = _commands("quickstart.rst")
    start = next(i for i, line in enumerate(lines) if line.startswith("CT_SMALL="))
    script = "\n".join(lines[start:start + 2]).replace("~/orthanc-venv/bin/python", sys.executable)
    script = script.replace("http://localhost:8042", server.url)
    assert "curl" in script
    result = subprocess.run(["sh", "-e", "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("{") and '"Status" : "Success"' in result.stdout
    (instance,) = server.get_json("/instances")
    assert server.get_json(f"/instances/{instance}/simplified-tags")["Modality"] == "CT"


# What a reader's window shows: a 1280-pixel screen, the pages with the most code.
CODE_PAGES = ["quickstart.html", "tutorial.html", "deployment.html", "configuration.html", "scale-out.html"]
MEASURE_CODE = """
<script>
  // Each code block whose lines reach past its box (hidden behind a scroll bar).
  const cut = [...document.querySelectorAll("pre")]
    .filter((block) => block.scrollWidth > block.clientWidth + 1)
    .map((block) => block.textContent.split("\\n").reduce((a, b) => (b.length > a.length ? b : a), ""));
  document.body.setAttribute("data-cut-code", JSON.stringify(cut));
</script>
"""


@pytest.mark.parametrize("page", CODE_PAGES)
def test_code_blocks_show_whole_lines_at_1280_pixels(site: Path, tmp_path: Path, page: str) -> None:
    # A copy of the page, beside it (its stylesheets load the same), measures its own code blocks.
    measured = site / f"measured-{page}"
    measured.write_text((site / page).read_text(encoding="utf-8").replace("</body>", MEASURE_CODE + "</body>"))
    try:
        dom = _rendered_dom(measured, tmp_path, "--window-size=1280,800")
    finally:
        measured.unlink()
    found = re.search(r'data-cut-code="([^"]*)"', dom)
    assert found, "the measuring script did not run"
    cut = html.unescape(found.group(1))
    assert cut == "[]", f"{page}: code lines cut at 1280 pixels: {cut}"
