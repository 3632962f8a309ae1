"""nnmd services: reference (QE and ASE calculators), trainer, MD, store, runtime."""
