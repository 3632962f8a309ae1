"""Test helper: EMT that takes ``delay`` seconds per call, so a test can kill a
worker while a request is in flight (used as 'ase:tests.unit.reference.slow_emt:make')."""

import time

from ase.calculators.emt import EMT


class SlowEMT(EMT):
    delay = 0.4

    def calculate(self, *args, **kwargs):
        time.sleep(self.delay)
        super().calculate(*args, **kwargs)


def make():
    return SlowEMT()
