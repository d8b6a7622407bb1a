"""The generic runner: trains any plan with FSDP2 under torchrun (or one process)."""
