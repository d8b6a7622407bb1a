"""`ltxc run export`: the exports of any checkpoint of a run, on demand, as the run would have written them."""

from __future__ import annotations

from pathlib import Path

from ltxc.errors import UserError


def run_export(*, run_dir: Path, checkpoint: Path | None, out: Path | None, device: str | None) -> int:
    """Export `checkpoint` (default: the run's latest) into `out` (default: `<run>/export-step-N`); exit code."""
    from ltxc.compiler import plan_from_json
    from ltxc.runner.checkpoint import latest_checkpoint, load_weights
    from ltxc.runner.distributed import init_distributed, shutdown
    from ltxc.runner.export import export_trained, trained_tasks
    from ltxc.runner.model import build_model
    from ltxc.runner.run_dir import RunDir, read_record

    run = RunDir(run_dir)
    record = read_record(run)
    plan = plan_from_json(record.plan, str(run.record))
    config = record.config
    source = checkpoint or latest_checkpoint(run.root)
    if source is None:
        raise UserError(f"{run_dir}: no complete checkpoint to export")
    info = init_distributed(device)
    try:
        model, lora, _ = build_model(plan, config, info)
        meta = load_weights(source, model, trainable_only=config.train.mode == "lora")
        target = out or run.export_of(int(meta["step"]))
        tasks = trained_tasks(config)  # their lora_metadata goes into the LoRA files
        exports = export_trained(plan, model, lora, config.export, target, is_main=info.is_main, tasks=tasks)
    finally:
        shutdown()
    if info.is_main:
        for kind, path in exports.items():
            print(f"export     {kind}: {path}")
    return 0
