"""A reference that keeps failing for one chain: EMT, except that every call for
chain001 from its step 3 on raises, the way a pw.x that never converges for that
chain's structures would (after its own retries). Used as `ase:` reference
`tests.integration.faults.flaky_reference:make` by test_chain_failure.py."""

from ase.calculators.emt import EMT


class FailsForOneChain(EMT):
    def calculate(self, atoms=None, properties=("energy",), system_changes=None):
        ident = str((atoms.info if atoms is not None else {}).get("nnmd_id", ""))
        parts = ident.split("/")
        if len(parts) == 3 and parts[1] == "chain001" and int(parts[2]) >= 3:
            raise RuntimeError("SCF not converged after 3 attempts (injected for chain001)")
        if system_changes is None:
            super().calculate(atoms, properties)
        else:
            super().calculate(atoms, properties, system_changes)


def make():
    return FailsForOneChain()
