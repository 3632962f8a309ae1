"""nnmd orchestrator: campaigns, coordinator, Python client and the `nnmd` CLI."""
