"""Components are built as diffusers / transformers load them: a module at a dtype equals what
`save_pretrained` + `from_pretrained(torch_dtype=...)` gives (modules the class keeps in float32 stay float32,
buffers are computed under that default dtype), from an inline config and from pretrained weights alike; and
in float32 nothing changed (the tiny specs' weights are exactly the seeded float32 construction).

Run: pytest -q tests/test_loading.py
"""

from __future__ import annotations

import tempfile
import warnings
from typing import Any

import attrs
import pytest
import torch
from conftest import TINY_LTX, TINY_LTX2, TINY_WAN

from ltxc.compiler import compile_spec
from ltxc.components import ComponentRecipe, module_dtype
from ltxc.spec import load_spec

TINY = {"ltx": TINY_LTX, "ltx-2.3": TINY_LTX2, "wan-2.1": TINY_WAN}
CASES = [
    (family, role)
    for family, path in TINY.items()
    for role, recipe in compile_spec(load_spec(path)).recipes.items()
    if recipe.kind == "module"
]


def _recipe(family: str, role: str, dtype: str = "float32") -> ComponentRecipe:
    return attrs.evolve(compile_spec(load_spec(TINY[family])).recipes[role], dtype=dtype)


def _tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer, persistent or not (non-persistent buffers are computed, not loaded)."""
    return dict(module.named_parameters()) | dict(module.named_buffers())


def _differences(a: torch.nn.Module, b: torch.nn.Module) -> list[str]:
    """Names whose dtype or value differs (or that only one side has); [] when bit-identical."""
    ta, tb = _tensors(a), _tensors(b)
    out = sorted(set(ta) ^ set(tb))
    for name in sorted(set(ta) & set(tb)):
        x, y = ta[name], tb[name]
        if x.dtype != y.dtype or x.shape != y.shape or not torch.equal(x, y):
            out.append(f"{name}: {x.dtype} vs {y.dtype}")
    return out


def _seeded_float32(recipe: ComponentRecipe) -> torch.nn.Module:
    """The construction ltxc always did for an inline config: seeded, float32 default dtype."""
    config: dict[str, Any] = dict(recipe.config or {})
    torch.manual_seed(recipe.seed)
    if hasattr(recipe.cls, "config_class") and recipe.cls.__module__.startswith("transformers"):
        return recipe.cls(recipe.cls.config_class(**config)).eval()
    return recipe.cls(**config).eval()


def _disk_round_trip(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """What the libraries' own loaders give for these weights at `dtype`."""
    key = "dtype" if type(module).__module__.startswith("transformers") else "torch_dtype"
    with tempfile.TemporaryDirectory() as directory:
        module.save_pretrained(directory)
        return type(module).from_pretrained(directory, **{key: dtype}).eval()


@pytest.mark.parametrize(("family", "role"), CASES)
def test_float32_builds_are_unchanged(family: str, role: str) -> None:
    built = _recipe(family, role).build()
    assert _differences(built, _seeded_float32(_recipe(family, role))) == []
    assert {t.dtype for t in _tensors(built).values() if t.is_floating_point()} <= {torch.float32}


@pytest.mark.parametrize(("family", "role"), CASES)
def test_bfloat16_config_build_equals_from_pretrained(family: str, role: str) -> None:
    built = _recipe(family, role, "bfloat16").build()
    expected = _disk_round_trip(_seeded_float32(_recipe(family, role)), torch.bfloat16)
    assert _differences(built, expected) == [], f"{family} {role}"
    assert not built.training
    assert module_dtype(built) == torch.bfloat16


def test_keep_in_float32_modules_stay_float32() -> None:
    """Wan's transformer keeps its time embedder, norms, scale-shift tables and rope buffers in float32."""
    model = _recipe("wan-2.1", "transformer", "bfloat16").build()
    keep = type(model)._keep_in_fp32_modules
    kept = {n for n, p in model.named_parameters() if any(k in n.split(".") for k in keep)}
    assert kept and all(p.dtype == torch.float32 for n, p in model.named_parameters() if n in kept)
    assert all(p.dtype == torch.bfloat16 for n, p in model.named_parameters() if n not in kept)
    assert next(model.parameters()).dtype == torch.float32  # why the compute dtype is not "the first parameter"
    assert module_dtype(model) == torch.bfloat16
    assert {b.dtype for n, b in model.named_buffers() if n.startswith("rope.")} == {torch.float32}


def test_pretrained_build_keeps_what_from_pretrained_keeps(tmp_path) -> None:
    """No `.to(dtype)` after `from_pretrained`: it would undo the keep-in-float32 modules."""
    source = _seeded_float32(_recipe("wan-2.1", "transformer"))
    source.save_pretrained(tmp_path / "transformer")
    recipe = attrs.evolve(
        _recipe("wan-2.1", "transformer", "bfloat16"),
        source="pretrained",
        pretrained=str(tmp_path),
        subfolder="transformer",
    )
    loaded = recipe.build()
    expected = type(source).from_pretrained(tmp_path / "transformer", torch_dtype=torch.bfloat16)
    assert _differences(loaded, expected) == []
    assert torch.float32 in {p.dtype for p in loaded.parameters()}
    assert not loaded.training


def test_fsdp_mixed_precision_keeps_the_kept_modules_in_float32() -> None:
    """Training under `parallel.precision = "bf16"` computes the modules the class keeps in float32 in float32
    (their own FSDP policy), and the rest of each block in bf16: training sees what inference loads."""
    import torch.distributed as dist
    from conftest import isolated_process_group
    from torch.distributed.device_mesh import init_device_mesh

    from ltxc.runner.parallelize import kept_in_float32, parallelize

    plan = compile_spec(load_spec(TINY_WAN))
    model = _recipe("wan-2.1", "transformer").build()  # float32 master weights, as the runner holds them
    names = {id(module): name for name, module in model.named_modules()}
    kept = kept_in_float32(model)
    assert sorted(names[id(m)] for m in kept) == [
        "blocks.0.norm2",
        "blocks.1.norm2",
        "condition_embedder.time_embedder",
    ]
    seen: dict[str, tuple[set[torch.dtype], torch.dtype]] = {}
    watched = {names[id(m)]: m for m in kept} | {"blocks.0.attn1.to_q": model.blocks[0].attn1.to_q}
    with isolated_process_group():
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        mesh = init_device_mesh("cpu", (1,), mesh_dim_names=("shard",))
        parallelize(model, plan.blocks, mesh, param_dtype=torch.bfloat16, activation_checkpointing=False)
        for name, module in watched.items():  # registered after FSDP's hooks: they see the gathered parameters
            params: set[torch.dtype] = set()
            module.register_forward_pre_hook(lambda m, _, params=params: params.update(p.dtype for p in m.parameters()))
            module.register_forward_hook(
                lambda m, _, out, name=name, params=params: seen.__setitem__(name, (params, out.dtype))
            )
        _forward_backward(model)
    assert set(seen) == set(watched)
    for name, (params, output) in seen.items():
        expected = torch.bfloat16 if name.endswith("to_q") else torch.float32
        assert params == {expected} and output == expected, (name, params, output)


@pytest.mark.parametrize("trainable", [False, True], ids=["frozen-base", "full"])
def test_fsdp_bare_kept_parameters_stay_float32_when_frozen(trainable: bool) -> None:
    """A parameter the class keeps in float32 outside any kept module (Wan's scale-shift tables) shares its unit's
    bf16 policy; frozen (a LoRA's base), it is exempt from the cast and computes in float32 as inference loads it.
    Trainable (a full fine-tune), FSDP2 needs one gradient dtype per unit: it computes in bf16, with a warning."""
    import torch.distributed as dist
    from conftest import isolated_process_group
    from torch.distributed.device_mesh import init_device_mesh

    from ltxc.runner.parallelize import parallelize

    plan = compile_spec(load_spec(TINY_WAN))
    model = _recipe("wan-2.1", "transformer").build()
    model.requires_grad_(trainable)
    model.blocks[0].attn1.to_q.weight.requires_grad_(True)  # something trains in either case
    seen: dict[str, torch.dtype] = {}
    with isolated_process_group(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        mesh = init_device_mesh("cpu", (1,), mesh_dim_names=("shard",))
        parallelize(model, plan.blocks, mesh, param_dtype=torch.bfloat16, activation_checkpointing=False)
        for name, module in (("root", model), ("block", model.blocks[0])):  # after FSDP's all-gather hooks
            module.register_forward_pre_hook(lambda m, _, name=name: seen.__setitem__(name, m.scale_shift_table.dtype))
        _forward_backward(model)
    expected = torch.bfloat16 if trainable else torch.float32
    assert seen == {"root": expected, "block": expected}
    warned = [w for w in caught if "keeps in float32 compute in the mixed-precision dtype" in str(w.message)]
    assert bool(warned) == trainable


def _forward_backward(model: torch.nn.Module) -> None:
    """One seeded bf16 forward and backward of the tiny Wan transformer (shapes of the tiny spec)."""
    torch.manual_seed(0)
    x = torch.randn(1, 16, 3, 8, 12, dtype=torch.bfloat16)
    text = torch.randn(1, 8, 32, dtype=torch.bfloat16)
    model(hidden_states=x, timestep=torch.tensor([500.0]), encoder_hidden_states=text).sample.float().sum().backward()
