"""The trainer service: data readers, the training run with its reports, and the gRPC servicer."""
