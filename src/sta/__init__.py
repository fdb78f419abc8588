"""sta: subtomogram averaging for cryo-electron tomography, drop-in for RELION 5 tomo programs."""

__version__ = "0.1.0"
