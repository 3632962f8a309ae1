"""The coordinator: campaign specs, the campaign runner, executors and the gRPC service."""
