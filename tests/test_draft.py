"""`ltxc draft` (issue 15): a spec and its tiny twin drafted from a diffusers pipeline class and, with --pretrained,
the configs-only checkpoints in tests/fixtures/pretrained/. Fast (no weights, CPU).

    pytest -q tests/test_draft.py -p no:randomly
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomllib

from ltxc.cli import main

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "pretrained"
FLUX = {
    "transformer": "diffusers:FluxTransformer2DModel",
    "vae": "diffusers:AutoencoderKL",
    "text_encoder": "transformers:CLIPTextModel",
    "tokenizer": "transformers:CLIPTokenizer",
    "text_encoder_2": "transformers:T5EncoderModel",
    "tokenizer_2": "transformers:T5TokenizerFast",
    "scheduler": "diffusers:FlowMatchEulerDiscreteScheduler",
}
LTX = {
    "transformer": "diffusers:LTXVideoTransformer3DModel",
    "vae": "diffusers:AutoencoderKLLTXVideo",
    "text_encoder": "transformers:T5EncoderModel",
    "tokenizer": "transformers:T5TokenizerFast",
    "scheduler": "diffusers:FlowMatchEulerDiscreteScheduler",
}
WAN = {  # the class alone: the scheduler from the docstring example, the tokenizer's hint is AutoTokenizer (a TODO)
    "transformer": "diffusers:WanTransformer3DModel",
    "vae": "diffusers:AutoencoderKLWan",
    "text_encoder": "transformers:UMT5EncoderModel",
    "tokenizer": None,
    "scheduler": "diffusers:UniPCMultistepScheduler",
}
LTX2 = {  # the class alone: the first of each union hint (a TODO names the others)
    "transformer": "diffusers:LTX2VideoTransformer3DModel",
    "vae": "diffusers:AutoencoderKLLTX2Video",
    "audio_vae": "diffusers:AutoencoderKLLTX2Audio",
    "text_encoder": "transformers:Gemma3ForConditionalGeneration",
    "tokenizer": "transformers:GemmaTokenizerFast",
    "connectors": "diffusers.pipelines.ltx2.connectors:LTX2TextConnectors",
    "vocoder": "diffusers.pipelines.ltx2.vocoder:LTX2Vocoder",
    "scheduler": "diffusers:FlowMatchEulerDiscreteScheduler",
}
# (pipeline, fixture, shipped spec, hub id)
PRETRAINED = [
    ("LTXPipeline", "LTX-Video", "ltx.toml", "Lightricks/LTX-Video"),
    ("WanPipeline", "Wan2.1-T2V-1.3B-Diffusers", "wan-2.1.toml", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"),
    ("LTX2Pipeline", "LTX-2.3", "ltx-2.3.toml", "Lightricks/LTX-2.3"),
    ("FluxPipeline", "FLUX.1-dev", "flux-1.toml", "black-forest-labs/FLUX.1-dev"),
]


def _draft(tmp_path: Path, pipeline: str, *extra: str, name: str = "x.toml") -> tuple[dict, str, dict]:
    out = tmp_path / name
    assert main(["draft", "--reference", f"diffusers:{pipeline}", "--out", str(out), *extra]) == 0
    text = out.read_text()
    return tomllib.loads(text), text, tomllib.loads((tmp_path / "tiny" / name).read_text())


def _same_class(drafted: str | None, expected: str) -> bool:
    """Equal names, or (tokenizers) names of the very same class: transformers 5 makes XFast an alias of X."""
    from ltxc.components import resolve_class

    return drafted == expected or (drafted is not None and resolve_class(drafted) is resolve_class(expected))


@pytest.mark.parametrize(
    ("pipeline", "expected"),
    [("FluxPipeline", FLUX), ("LTXPipeline", LTX), ("WanPipeline", WAN), ("LTX2Pipeline", LTX2)],
)
def test_the_class_alone_gives_the_roles_and_classes(tmp_path, pipeline, expected):
    spec, text, _ = _draft(tmp_path, pipeline)
    components = spec["components"]
    assert set(components) == set(expected)
    for role, cls in expected.items():
        drafted = components[role].get("class")
        if cls is None:
            assert drafted is None and re.search(r"# TODO: class = \?.*AutoTokenizer", text)
        else:
            assert _same_class(drafted, cls), (role, drafted, cls)
        assert components[role]["subfolder"] == role
    assert spec["model"]["reference"] == f"diffusers:{pipeline}"


@pytest.mark.parametrize(("pipeline", "fixture", "shipped", "hub_id"), PRETRAINED, ids=[p[1] for p in PRETRAINED])
def test_with_pretrained_every_component_is_the_shipped_specs(tmp_path, pipeline, fixture, shipped, hub_id):
    spec, _, _ = _draft(tmp_path, pipeline, "--pretrained", str(FIXTURES / fixture), "--hub-id", hub_id)
    truth = tomllib.loads((ROOT / "specs" / shipped).read_text())["components"]
    drafted = spec["components"]
    assert set(drafted) == set(truth)
    for role, table in truth.items():
        for key in ("class", "pretrained", "subfolder"):
            assert drafted[role][key] == table[key], (role, key)


@pytest.mark.parametrize("pipeline", ["FluxPipeline", "LTXPipeline", "WanPipeline", "LTX2Pipeline"])
def test_every_todo_names_a_source_line(tmp_path, pipeline):
    _, text, _ = _draft(tmp_path, pipeline)
    todos = [line for line in text.splitlines() if "TODO:" in line and not line.startswith("# Every")]
    assert todos  # the class alone always leaves something to decide
    for line in todos:
        assert re.search(r"[\w/]+\.py:\d+", line), line


def test_a_local_checkpoint_fills_the_geometry_and_normalisation_exactly(tmp_path):
    spec, _, _ = _draft(tmp_path, "LTXPipeline", "--pretrained", str(FIXTURES / "LTX-Video"))
    shipped = tomllib.loads((ROOT / "specs" / "ltx.toml").read_text())
    assert spec["geometry"] == shipped["geometry"]
    assert spec["latent"] == shipped["latent"]
    assert spec["text"] == shipped["text"]
    assert spec["flow"]["shift"] == shipped["flow"]["shift"] == spec["sampler"]["shift"]
    # a local directory is named relative to the spec, as the spec language reads `pretrained`
    assert spec["components"]["vae"]["pretrained"].startswith(("./", "../"))


def test_the_class_alone_leaves_the_checkpoint_dependent_values_as_todos(tmp_path):
    _, text, _ = _draft(tmp_path, "LTXPipeline")
    assert re.search(r"TODO: the checkpoint's scheduler config decides \(pipelines/ltx/pipeline_ltx\.py:\d+\)", text)
    assert re.search(r"TODO: rope_interpolation_scale = \?.*pipelines/ltx/pipeline_ltx\.py:\d+", text)


def _merge(drafted: dict, shipped: dict) -> dict:
    """The draft with what it left out filled from the shipped spec (the draft's own values win)."""
    out = dict(drafted)
    for key, value in shipped.items():
        if key not in out:
            out[key] = value
        elif isinstance(value, dict) and isinstance(out[key], dict):
            out[key] = _merge(out[key], value)
    return out


def _write_toml(path: Path, table: dict) -> None:
    from ltxc.draft.document import toml_value

    lines = []

    def emit(prefix: str, node: dict) -> None:
        scalars = {k: v for k, v in node.items() if not isinstance(v, dict) or not _is_table(prefix, k)}
        if prefix:
            lines.append(f"[{prefix}]")
        lines.extend(f'"{k}" = {toml_value(v)}' if "." in k else f"{k} = {toml_value(v)}" for k, v in scalars.items())
        for k, v in node.items():
            if k not in scalars:
                emit(f"{prefix}.{k}" if prefix else k, v)

    emit("", table)
    path.write_text("\n".join(lines) + "\n")


def _is_table(prefix: str, key: str) -> bool:
    """Sections the spec writes as [tables] (everything else nested is an inline table)."""
    name = f"{prefix}.{key}" if prefix else key
    inline = {"geometry.frames", "latent.normalise", "flow.sigma", "flow.shift", "sampler.shift", "lora.comfyui_names"}
    return name == "model" or (name not in inline and not name.startswith("model."))


def test_the_drafted_ltx_spec_compiles_once_its_todos_are_filled(tmp_path):
    from ltxc.compiler import compile_spec
    from ltxc.spec import load_spec

    spec, _, _ = _draft(tmp_path, "LTXPipeline", "--pretrained", str(FIXTURES / "LTX-Video"), "--hub-id",
                        "Lightricks/LTX-Video")  # fmt: skip
    shipped = tomllib.loads((ROOT / "specs" / "ltx.toml").read_text())
    shipped.pop("tasks")  # a task is a further pipeline's, not the draft's
    _write_toml(tmp_path / "x.toml", _merge(spec, shipped))
    plan = compile_spec(load_spec(tmp_path / "x.toml"))
    assert plan.geometry.latent_channels == 128
    tiny = compile_spec(load_spec(tmp_path / "tiny" / "x.toml"))  # the tiny twin extends the filled spec
    assert tiny.hash != plan.hash


@pytest.mark.parametrize(
    ("pipeline", "fixture"),
    [
        ("FluxPipeline", None),
        ("FluxPipeline", "FLUX.1-dev"),
        ("LTXPipeline", "LTX-Video"),
        ("WanPipeline", "Wan2.1-T2V-1.3B-Diffusers"),
    ],
)
def test_the_tiny_twins_components_build(tmp_path, pipeline, fixture):
    from ltxc.components import ComponentRecipe, default_kind, resolve_component_class

    extra = ["--pretrained", str(FIXTURES / fixture)] if fixture else []
    spec, _, tiny = _draft(tmp_path, pipeline, *extra)
    assert tiny["model"]["extends"] == "../x.toml"
    for role, table in tiny["components"].items():
        reference = table.get("class") or spec["components"][role]["class"]
        kind = default_kind(role)
        recipe = ComponentRecipe(role, reference, resolve_component_class(reference, kind), kind, "config",
                                 config=table["config"])  # fmt: skip
        built = recipe.build()
        if kind == "module":
            assert sum(p.numel() for p in built.parameters()) < 3_000_000, role  # tiny
    if pipeline == "FluxPipeline":
        transformer = tiny["components"]["transformer"]["config"]
        assert sum(transformer["axes_dims_rope"]) == transformer["attention_head_dim"]  # rotary axes fill a head
        assert tiny["components"]["text_encoder"]["config"]["eos_token_id"] == 1  # the byte tokenizer's </s>
        assert tiny["components"]["tokenizer"]["config"]["model_max_length"] == 77
    for key in ("latent_channels",):
        assert spec["geometry"][key] in (16, 128)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--reference", "diffusers:FluxPipelin"], "did you mean FluxPipeline"),
        (["--reference", "diffusers:AutoencoderKL"], "is not a diffusers pipeline"),
        (["--reference", "transformers:CLIPTextModel"], "write it as diffusers:<PipelineClass>"),
        (["--reference", "diffusers:FluxPipeline", "--pretrained", "{empty}"], "model_index.json does not exist"),
        (["--reference", "diffusers:FluxPipeline", "--pretrained", "some-org/not-cached"], "does not download"),
        (["--reference", "diffusers:FluxPipeline", "--pretrained", "{ltx}"], "pass --reference diffusers:LTXPipeline"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, capsys, argv, message):
    (tmp_path / "empty").mkdir()
    argv = [a.format(empty=tmp_path / "empty", ltx=FIXTURES / "LTX-Video") for a in argv]
    assert main(["draft", *argv, "--out", str(tmp_path / "x.toml")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.toml").exists()


def test_the_out_file_must_be_toml(tmp_path, capsys):
    assert main(["draft", "--reference", "diffusers:FluxPipeline", "--out", str(tmp_path / "x.yaml")]) == 2
    assert "x.toml" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("pipeline", "fixture", "shipped", "hub_id"),
    [PRETRAINED[0], PRETRAINED[3]],
    ids=["LTX-Video", "FLUX.1-dev"],
)
def test_the_drafted_tiny_twin_verifies_against_the_pipeline(tmp_path, capsys, pipeline, fixture, shipped, hub_id):
    """The draft from the published configs, its TODOs filled from the shipped spec: its own tiny twin (untouched)
    is bit-equal to the reference pipeline, so the geometry and tiny configs the draft chose fit together."""
    spec, _, _ = _draft(tmp_path, pipeline, "--pretrained", str(FIXTURES / fixture), "--hub-id", hub_id)
    truth = tomllib.loads((ROOT / "specs" / shipped).read_text())
    truth.pop("tasks", None)
    _write_toml(tmp_path / "x.toml", _merge(spec, truth))
    capsys.readouterr()
    assert main(["verify", str(tmp_path / "tiny" / "x.toml"), "--steps", "2", "--device", "cpu"]) == 0
    assert "PASS" in capsys.readouterr().out


def test_a_hub_id_in_the_hugging_face_cache_is_read_without_downloading(tmp_path, monkeypatch):
    import shutil

    import huggingface_hub.constants

    snapshot = tmp_path / "hub" / "models--Lightricks--LTX-Video" / "snapshots" / "0123abcd"
    shutil.copytree(FIXTURES / "LTX-Video", snapshot)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    spec, _, _ = _draft(tmp_path, "LTXPipeline", "--pretrained", "Lightricks/LTX-Video")
    assert spec["components"]["vae"]["pretrained"] == "Lightricks/LTX-Video"  # the hub id, as the spec loads it
    assert spec["flow"]["shift"]["kind"] == "resolution"  # read from the cached scheduler config


def test_the_shrink_rules_keep_geometry_and_the_head_arithmetic():
    from ltxc.draft.tiny import head_dim, shrink

    real = {"num_attention_heads": 24, "attention_head_dim": 128, "axes_dims_rope": [16, 56, 56], "num_layers": 19,
            "in_channels": 64, "joint_attention_dim": 4096, "mlp_ratio": 4.0, "patch_size": 1}  # fmt: skip
    tiny_head = head_dim([real])
    tiny = shrink(real, tiny_head, text_model=False)
    assert sum(tiny["axes_dims_rope"]) == tiny["attention_head_dim"] and all(x % 2 == 0 for x in tiny["axes_dims_rope"])
    assert tiny["joint_attention_dim"] == tiny["num_attention_heads"] * tiny["attention_head_dim"]  # one width
    assert (tiny["in_channels"], tiny["patch_size"], tiny["mlp_ratio"], tiny["num_layers"]) == (64, 1, 4.0, 1)
    vae = shrink({"block_out_channels": [128, 256, 512, 512], "norm_num_groups": 32, "latent_channels": 16}, 16, False)
    assert vae == {"block_out_channels": [8, 16, 32, 32], "norm_num_groups": 2, "latent_channels": 16}  # ratios kept
    text = shrink({"vocab_size": 49408, "eos_token_id": 49407, "bos_token_id": 49406, "hidden_size": 768}, 16, True)
    assert text == {"vocab_size": 384, "eos_token_id": 1, "bos_token_id": 2, "hidden_size": 32}  # the byte tokenizer's


def test_an_existing_spec_is_not_overwritten_without_force(tmp_path, capsys):
    (tmp_path / "x.toml").write_text("# hand-edited\n")
    argv = ["draft", "--reference", "diffusers:LTXPipeline", "--out", str(tmp_path / "x.toml")]
    assert main(argv) == 2
    assert "pass --force" in capsys.readouterr().err and (tmp_path / "x.toml").read_text() == "# hand-edited\n"
    assert main([*argv, "--force"]) == 0
    assert "[geometry]" in (tmp_path / "x.toml").read_text()


@pytest.mark.parametrize("pipeline", ["StableDiffusion3Pipeline", "CogVideoXPipeline", "HunyuanVideoPipeline"])
def test_other_pipelines_draft_without_a_traceback(tmp_path, pipeline):
    """Nothing in the reader is specific to the four families: other pipelines draft, parse and cite their lines."""
    spec, text, tiny = _draft(tmp_path, pipeline)
    assert spec["model"]["reference"] == f"diffusers:{pipeline}" and "transformer" in spec["components"]
    assert tiny["model"]["extends"] == "../x.toml"
    assert all(re.search(r"\.py:\d+", line) for line in text.splitlines() if line.startswith("# TODO:"))


# docs/onboarding.md section 8, edit by edit: (number, drafted text, replacement)
WALKTHROUGH_TODOS = [
    (1, 'description = "drafted from diffusers:FluxPipeline"', 'description = "FLUX.1-dev (walk-through)"'),
    (3, "# TODO: timestep = ?", 'timestep = "cast(timestep, latents) / 1000"\n#'),
    (4, "# TODO: txt_ids = ?", 'txt_ids = "zeros([size(text.embeds, 1), 3], text.pooled)"\n#'),
    (5, "# TODO: img_ids = ?", 'img_ids = "grid_coordinates([latent.frames // patch_t, latent.height // patch_h, '
     'latent.width // patch_w], latents)"\n#'),
]  # fmt: skip
WALKTHROUGH_REFERENCE_ARGS = (
    'reference = "diffusers:FluxPipeline"',
    'reference = "diffusers:FluxPipeline"\n'
    'reference_args = { guidance_scale = "input.guidance", true_cfg_scale = "guidance" }',
)
WALKTHROUGH_LATENT_DTYPE = ("\ncfg = ", '\nlatent_dtype = "text_encoder_2"\ncfg = ')


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) >= 1, old
    path.write_text(text.replace(old, new, 1))


def _verify(capsys: pytest.CaptureFixture[str], spec: Path, *extra: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["verify", str(spec), "--steps", "2", "--device", "cpu", *extra])
    return code, capsys.readouterr().out


def test_the_flux_walkthrough_edits_make_verify_green(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The onboarding guide's FLUX.1-dev walk-through as a user runs it: the draft from the published configs, the
    five TODO edits, then verify fails where the guide says (the guidance input), edit 6 makes float32 pass, bf16
    fails at step 1 until edit 7, then both pass."""
    out = tmp_path / "my-flux.toml"
    assert main(["draft", "--reference", "diffusers:FluxPipeline", "--pretrained", str(FIXTURES / "FLUX.1-dev"),
                 "--hub-id", "black-forest-labs/FLUX.1-dev", "--out", str(out)]) == 0  # fmt: skip
    assert capsys.readouterr().out.count("\n  ") == 5  # five TODOs listed
    for _, old, new in WALKTHROUGH_TODOS:
        _edit(out, old, new)
    tiny = tmp_path / "tiny" / "my-flux.toml"
    code, report = _verify(capsys, tiny)
    assert code != 0 and "first departing stage: input.guidance" in report
    _edit(out, *WALKTHROUGH_REFERENCE_ARGS)
    assert _verify(capsys, tiny)[0] == 0
    code, report = _verify(capsys, tiny, "--dtype", "bfloat16")
    assert code != 0 and "first departing stage: step1" in report
    _edit(out, *WALKTHROUGH_LATENT_DTYPE)
    for extra in ((), ("--dtype", "bfloat16"), ("--guidance", "2.5")):
        code, report = _verify(capsys, tiny, *extra)
        assert code == 0 and "PASS" in report, report
