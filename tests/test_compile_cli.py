"""`ltxc compile`: the summary it prints, the plan.json it writes, and the ways to invoke it.

Covers the CLI contract for `ltxc compile SPEC [--out DIR] [--size WxHxF]` on the real LTX-Video spec (which
names a hub id but loads nothing) and its tiny twin: latent shapes and token counts for the default and
requested sizes, the valid frame counts, components, normaliser and the evaluated call mapping; the plan
file's keys and content hash (stable, and sensitive to spec changes); the default `.ltxc/` output; and the
`python -m ltxc` and `ltxc` console-script entry points as real subprocesses.

Run: `cd /work/main && . .venv/bin/activate && pytest -q tests/test_compile_cli.py`
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, SPECS, TINY_LTX, run_cli

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REAL_LTX = SPECS / "ltx.toml"
ROLES = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
VALID_FRAMES = list(range(1, 258, 8))  # 8n+1 up to 257
DEFAULT_SIZE_LINES = (
    "768x512x121 -> [128, 16, 16, 24], 6,144 tokens",
    "1216x704x121 -> [128, 16, 22, 38], 13,376 tokens",
)


@pytest.fixture
def in_root(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run from the checkout's root, so `specs/ltx.toml` is a relative path as a user would type it."""
    monkeypatch.chdir(ROOT)
    return ROOT


def compile_ok(capsys: pytest.CaptureFixture[str], spec: str | Path, out: Path, *extra: str) -> tuple[str, dict]:
    """Run `ltxc compile`, expect success; return (stdout, plan.json content)."""
    code, stdout, stderr = run_cli(capsys, "compile", str(spec), "--out", str(out), *extra)
    assert code == 0, stderr
    assert "Traceback" not in stderr
    plan_file = out / "plan.json"
    assert plan_file.is_file()
    assert stdout.rstrip().splitlines()[-1] == f"plan       {plan_file}"
    return stdout, json.loads(plan_file.read_text())


def frame_counts(stdout: str) -> list[int]:
    match = re.search(r"^\s+frames\s+8n\+1: ([\d, ]+) \(up to 257\)$", stdout, re.MULTILINE)
    assert match, stdout
    return [int(part) for part in match.group(1).split(", ")]


def component_line(stdout: str, role: str) -> str:
    match = re.search(rf"^  {role} +(\S+ <- .*)$", stdout, re.MULTILINE)
    assert match, f"no line for component {role!r} in:\n{stdout}"
    return match.group(1)


def call_lines(stdout: str) -> dict[str, str]:
    """The `transformer.call` section: key -> what follows its `=`."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("transformer.call (fps = 25)"))
    out: dict[str, str] = {}
    for line in lines[start + 1 :]:
        if not line.startswith("  "):
            break
        key, _, value = line.strip().partition(" = ")
        out[key.strip()] = value.strip()
    return out


def check_plan_file(plan: dict[str, Any], stdout: str) -> None:
    assert set(plan) == {"ltxc_plan", "hash", "sources", "spec"}
    assert plan["ltxc_plan"] == 1
    assert re.fullmatch(r"[0-9a-f]{64}", plan["hash"])
    assert re.search(rf"^hash       {plan['hash'][:16]}$", stdout, re.MULTILINE)
    assert "extends" not in plan["spec"]["model"]  # merged away; sources records the files
    assert set(plan["spec"]["components"]) == set(ROLES)


def test_compile_real_spec(capsys: pytest.CaptureFixture[str], in_root: Path, tmp_path: Path) -> None:
    stdout, plan = compile_ok(capsys, "specs/ltx.toml", tmp_path / "plan")

    for line in DEFAULT_SIZE_LINES:
        assert re.search(rf"^    {re.escape(line)}$", stdout, re.MULTILINE), line

    counts = frame_counts(stdout)
    assert counts == VALID_FRAMES and len(counts) == 33
    assert 258 not in counts and 265 not in counts and 121 in counts

    spec = tomllib.loads(REAL_LTX.read_text())
    for role in ROLES:
        described = component_line(stdout, role)
        assert described.startswith(spec["components"][role]["class"] + " <- Lightricks/LTX-Video")
        assert f"[{spec['components'][role]['subfolder']}]" in described

    assert re.search(
        r"^normaliser mean_std: \(z - vae\.latents_mean\) \* vae\.config\.scaling_factor / vae\.latents_std$",
        stdout,
        re.MULTILINE,
    )

    calls = call_lines(stdout)
    assert list(calls) == list(spec["transformer"]["call"])  # every key, in the spec's order
    assert calls["rope_interpolation_scale"].endswith("= [0.32, 32, 32]")
    assert calls["timestep"] == "float32(sigma * 1000)"  # not static: shown without a value

    check_plan_file(plan, stdout)
    assert plan["sources"] == ["specs/ltx.toml"]
    assert plan["spec"]["model"]["name"] == "ltx-video"
    assert plan["spec"]["sampler"]["steps"] == 50
    for role in ROLES:
        table = plan["spec"]["components"][role]
        assert table["source"] == "pretrained" and table["pretrained"] == "Lightricks/LTX-Video"
        assert "config" not in table and "seed" not in table


def test_plan_hash_is_a_stable_content_hash(capsys: pytest.CaptureFixture[str], in_root: Path, tmp_path: Path) -> None:
    _, first = compile_ok(capsys, "specs/ltx.toml", tmp_path / "a")
    _, second = compile_ok(capsys, "specs/ltx.toml", tmp_path / "b")
    assert first["hash"] == second["hash"]
    _, absolute = compile_ok(capsys, REAL_LTX, tmp_path / "c")  # the same spec named another way
    assert absolute["hash"] == first["hash"]

    parent = f'[model]\nname = "ltx-video"\nextends = {json.dumps(str(REAL_LTX))}\n'
    child = tmp_path / "steps.toml"
    child.write_text(parent + "\n[sampler]\nsteps = 51\n")
    _, changed = compile_ok(capsys, child, tmp_path / "d")
    assert changed["spec"]["sampler"]["steps"] == 51
    assert changed["hash"] != first["hash"]
    assert changed["sources"] == [str(REAL_LTX), str(child)]

    # Restating the parent's value changes nothing in the resolved spec, so the hash is the parent's.
    same = tmp_path / "same.toml"
    same.write_text(parent + "\n[sampler]\nsteps = 50\n")
    _, unchanged = compile_ok(capsys, same, tmp_path / "e")
    assert unchanged["hash"] == first["hash"]


def test_compile_tiny_spec(capsys: pytest.CaptureFixture[str], in_root: Path, tmp_path: Path) -> None:
    stdout, plan = compile_ok(capsys, "specs/tiny/ltx.toml", tmp_path / "plan")

    for line in DEFAULT_SIZE_LINES:  # tiny weights, the real geometry
        assert re.search(rf"^    {re.escape(line)}$", stdout, re.MULTILINE), line
    assert frame_counts(stdout) == VALID_FRAMES
    assert call_lines(stdout)["rope_interpolation_scale"].endswith("= [0.32, 32, 32]")
    assert "normaliser mean_std: (z - vae.latents_mean)" in stdout
    assert re.search(r"^sampler    8 steps, ", stdout, re.MULTILINE)
    assert "Lightricks/LTX-Video" not in stdout

    for role in ROLES:
        assert "inline config" in component_line(stdout, role)
    assert component_line(stdout, "tokenizer").startswith("transformers:ByT5Tokenizer <- ")

    check_plan_file(plan, stdout)
    assert plan["sources"] == ["specs/ltx.toml", "specs/tiny/ltx.toml"]  # root ancestor first
    assert plan["spec"]["model"]["name"] == "ltx-video-tiny"
    for role in ROLES:
        table = plan["spec"]["components"][role]
        assert table["source"] == "config", role
        assert isinstance(table["config"], dict), role
        for leftover in ("pretrained", "subfolder", "revision"):
            assert leftover not in table, f"{role}.{leftover} left over from the parent"
    assert plan["spec"]["components"]["transformer"]["config"]["num_layers"] == 2

    _, real = compile_ok(capsys, "specs/ltx.toml", tmp_path / "real")
    assert real["hash"] != plan["hash"]


def test_size_option(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    stdout, _ = compile_ok(capsys, TINY_LTX, tmp_path / "plan", "--size", "1024x576x97")
    assert re.search(r"^    1024x576x97 -> \[128, 13, 18, 32\], 7,488 tokens$", stdout, re.MULTILINE)
    assert "768x512x121" not in stdout  # --size replaces the default sizes

    stdout, plan = compile_ok(
        capsys,
        TINY_LTX,
        tmp_path / "invalid",
        "--size",
        "1000x576x97",
        "--size",
        "768x512x96",
        "--size",
        "768x512x121",
    )
    width_line = re.search(r"^    1000x576x97 -> invalid: (.*)$", stdout, re.MULTILINE)
    assert width_line and "32" in width_line.group(1), stdout
    frames_line = re.search(r"^    768x512x96 -> invalid: (.*)$", stdout, re.MULTILINE)
    assert frames_line and "89" in frames_line.group(1) and "97" in frames_line.group(1), stdout
    assert re.search(rf"^    {re.escape(DEFAULT_SIZE_LINES[0])}$", stdout, re.MULTILINE)  # valid ones still shown
    assert re.fullmatch(r"[0-9a-f]{64}", plan["hash"])


@pytest.mark.parametrize("size", ["768x512", "768x512xabc", "big"])
def test_malformed_size_is_a_usage_error(capsys: pytest.CaptureFixture[str], tmp_path: Path, size: str) -> None:
    with pytest.raises(SystemExit) as info:
        run_cli(capsys, "compile", str(TINY_LTX), "--out", str(tmp_path), "--size", size)
    assert info.value.code == 2
    assert "WIDTHxHEIGHTxFRAMES" in capsys.readouterr().err
    assert not (tmp_path / "plan.json").exists()


def test_default_out_is_dot_ltxc(capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, stdout, stderr = run_cli(capsys, "compile", str(TINY_LTX))
    assert code == 0, stderr
    plan_file = tmp_path / ".ltxc" / "plan.json"
    assert plan_file.is_file()
    assert stdout.rstrip().splitlines()[-1] == "plan       .ltxc/plan.json"
    assert json.loads(plan_file.read_text())["spec"]["model"]["name"] == "ltx-video-tiny"
    assert [p.name for p in (tmp_path / ".ltxc").iterdir()] == ["plan.json"]  # no temp file left behind


def test_missing_spec_is_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    code, stdout, stderr = run_cli(capsys, "compile", str(missing), "--out", str(tmp_path / "out"))
    assert code == 2
    assert stderr.strip() == f"{missing}:1: file not found"
    assert stdout == ""
    assert not (tmp_path / "out").exists()


# `compile` and `verify` load the spec before anything imports torch: a bad spec fails in a fraction of a second.
BAD_SPEC_WITHOUT_TORCH = """
import sys
from ltxc.cli import main
codes = [main([command, sys.argv[1]]) for command in ("compile", "verify")]
assert codes == [2, 2], codes
assert "torch" not in sys.modules, "torch was imported before the spec was read"
"""


@pytest.fixture(scope="module")
def entry_points(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[subprocess.Popen[str], Path]]:
    """`python -m ltxc`, the `ltxc` console script and a bad spec, started together (each pays its imports)."""
    script = shutil.which("ltxc", path=str(Path(sys.executable).parent))
    assert script, f"no ltxc console script next to {sys.executable}"
    root = tmp_path_factory.mktemp("entry_points")
    argv = {
        "module": [sys.executable, "-m", "ltxc", "compile", "specs/tiny/ltx.toml", "--out", str(root / "module")],
        "script": [script, "compile", "specs/tiny/ltx.toml", "--out", str(root / "script")],
        "bad_spec": [sys.executable, "-c", BAD_SPEC_WITHOUT_TORCH, str(root / "bad_spec" / "nope.toml")],
    }
    return {
        name: (
            subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
            root / name,
        )
        for name, args in argv.items()
    }


def finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    stdout, stderr = process.communicate(timeout=120)
    return process.returncode, stdout, stderr


def check_success(entry: tuple[subprocess.Popen[str], Path]) -> dict[str, Any]:
    process, out = entry
    code, stdout, stderr = finish(process)
    assert code == 0, stderr
    assert "6,144 tokens" in stdout
    assert stdout.rstrip().splitlines()[-1] == f"plan       {out / 'plan.json'}"
    return json.loads((out / "plan.json").read_text())


def test_python_dash_m(entry_points: dict[str, tuple[subprocess.Popen[str], Path]]) -> None:
    plan = check_success(entry_points["module"])
    assert plan["spec"]["model"]["name"] == "ltx-video-tiny"

    from ltxc.compiler import compile_spec
    from ltxc.spec import load_spec

    assert plan["hash"] == compile_spec(load_spec(TINY_LTX)).hash  # the same hash in another process


def test_console_script(entry_points: dict[str, tuple[subprocess.Popen[str], Path]]) -> None:
    plan = check_success(entry_points["script"])
    assert plan["sources"] == ["specs/ltx.toml", "specs/tiny/ltx.toml"]


def test_a_bad_spec_fails_before_torch_is_imported(entry_points: dict[str, tuple[subprocess.Popen[str], Path]]) -> None:
    process, out = entry_points["bad_spec"]
    code, stdout, stderr = finish(process)
    assert code == 0, stdout + stderr
    assert stderr.splitlines() == [f"{out / 'nope.toml'}:1: file not found"] * 2
