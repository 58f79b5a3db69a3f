"""An ASE calculator that fails on about one frame in five (chosen by the frame's coordinates, so the
same frame fails every time), for testing failed FP tasks end to end. Named for what it is."""

import zlib

from ase.calculators.emt import EMT


class FlakyEMT(EMT):
    def calculate(self, atoms=None, properties=("energy",), system_changes=None):
        if zlib.crc32(atoms.positions.round(6).tobytes()) % 5 == 0:
            raise RuntimeError("injected failure: SCF did not converge")
        super().calculate(atoms, properties, system_changes or [])
