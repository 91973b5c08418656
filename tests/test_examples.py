"""The examples work: their own tests pass (and can fail), and the CLI serves them."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import request
from origin import free_port

ROOT = Path(__file__).resolve().parent.parent
CUSTOM_PLUGIN = ROOT / "examples" / "custom_plugin"


def run_pytest(directory: Path, cwd: Path) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(directory), "-q", "-p", "no:cacheprovider"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc.returncode, proc.stdout + proc.stderr


def test_custom_plugin_example_tests_pass() -> None:
    code, out = run_pytest(CUSTOM_PLUGIN, ROOT)
    assert code == 0, out
    defined = len(
        re.findall(r"^def test_", (CUSTOM_PLUGIN / "test_header_stamp.py").read_text(), re.M)
    )
    passed = re.search(r"(\d+) passed", out)
    assert passed is not None, out
    assert int(passed.group(1)) == defined >= 5, f"not every example test ran:\n{out}"


def test_custom_plugin_example_tests_catch_a_broken_plugin(tmp_path: Path) -> None:
    copy = tmp_path / "custom_plugin"
    shutil.copytree(CUSTOM_PLUGIN, copy, ignore=shutil.ignore_patterns("__pycache__"))
    source = copy / "header_stamp.py"
    text = source.read_text()
    broken = text.replace('ctx.set_header(conf["header"], value)', "pass")
    assert broken != text, "the mutation no longer applies: update this test"
    source.write_text(broken)
    code, out = run_pytest(copy, tmp_path)
    assert code != 0, out
    assert re.search(r"\d+ failed", out), out


def test_custom_plugin_example_runs_with_the_cli(cli, origin) -> None:
    port = free_port()
    cli(
        "--config",
        str(CUSTOM_PLUGIN / "node.yaml"),
        "--routes",
        str(CUSTOM_PLUGIN / "apisix.yaml"),
        "--listen",
        f"127.0.0.1:{port}",
        port=port,
        env={"STAMP_UPSTREAM": origin.addr},
    )
    base = f"http://127.0.0.1:{port}"
    r = request(base, "/stamp/hello")
    assert r.status == 200
    assert r.json()["headers"]["x-stamp"] == "from-the-gateway"
    assert r.headers["x-stamp"] == "from-the-gateway"
    assert r.headers["apisix-plugins"] == "hello-stamp#access, hello-stamp#header_filter"
    up = request(base, "/upload", method="POST", body=b"abc")
    assert up.headers["x-upload-stamp"] == "uploaded;method=POST"
    assert request(base, "/strict").status == 400
    assert request(base, "/strict", headers={"X-Client": "me"}).status == 200
