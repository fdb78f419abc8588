"""Auto-refine control of relion_refine (spec §6.5): sampling updates and convergence.

Pure bookkeeping, no arrays: the refinement loop reports the resolution and the changes of
the hidden variables after every iteration and asks what to sample next.
"""

import dataclasses
import math

MAX_NR_ITER_WO_RESOL_GAIN = 1
MAX_NR_ITER_WO_LARGE_HIDDEN_VARIABLE_CHANGES = 1


def healpix_step(order):
    """Angular step of a HEALPix order in degrees: 360 / (6·2^order)."""
    return 360.0 / (6 * 2 ** order)


@dataclasses.dataclass
class Sampling:
    """Current orientation/translation sampling (Å for offsets, degrees for angles)."""

    healpix_order: int = 2
    offset_range: float = 6.0
    offset_step: float = 2.0
    oversampling: int = 1
    auto_local_order: int = 4
    local: bool = False
    sigma_ang: float = 0.0
    user_sigmas: bool = False

    @property
    def psi_step(self):
        return healpix_step(self.healpix_order)

    def step(self, with_oversampling=True):
        """Angular step (deg), by default of the oversampled (fine) grid."""
        return healpix_step(self.healpix_order + (self.oversampling if with_oversampling else 0))

    def start_local_if_needed(self):
        if self.healpix_order >= self.auto_local_order:
            self.local = True
            self.sigma_ang = 2.0 * self.step()


@dataclasses.dataclass
class AutoRefine:
    """The convergence state RELION writes to ``_optimiser.star``."""

    best_resolution: float = 0.0          # 1/Å
    iter_wo_resol_gain: int = 0
    iter_wo_large_changes: int = 0
    smallest_changes_orient: float = 999.0
    smallest_changes_offset: float = 999.0
    changes_orient: float = 999.0
    changes_offset: float = 999.0
    acc_rot: float = 999.0
    acc_trans: float = 999.0
    fine_enough: bool = False
    converged: bool = False

    def update_resolution(self, resolution_inv):
        """After each M-step: count iterations without resolution gain."""
        if resolution_inv <= self.best_resolution + 1e-4:
            self.iter_wo_resol_gain += 1
        else:
            self.iter_wo_resol_gain = 0
        self.best_resolution = max(self.best_resolution, resolution_inv)

    def update_changes(self, mean_angle_change, rms_offset_change, sampling):
        """Hidden-variable changes of this iteration (degrees, Å)."""
        self.changes_orient = mean_angle_change
        self.changes_offset = rms_offset_change
        small_orient = (mean_angle_change < 0.4 * sampling.step()
                        or mean_angle_change >= self.smallest_changes_orient / 1.03)
        small_offset = (rms_offset_change < 0.4 * sampling.offset_step
                        or rms_offset_change >= self.smallest_changes_offset / 1.03)
        if small_orient and small_offset:
            self.iter_wo_large_changes += 1
        else:
            self.iter_wo_large_changes = 0
        self.smallest_changes_orient = min(self.smallest_changes_orient, mean_angle_change)
        self.smallest_changes_offset = min(self.smallest_changes_offset, rms_offset_change)

    def stalled(self, ignore_angles=False):
        return (self.iter_wo_resol_gain >= MAX_NR_ITER_WO_RESOL_GAIN
                and (ignore_angles or self.iter_wo_large_changes >= MAX_NR_ITER_WO_LARGE_HIDDEN_VARIABLE_CHANGES))

    def update_sampling(self, sampling, ignore_angles=False, min_step=0.0):
        """Go to finer sampling when stalled; returns True when the sampling changed."""
        if not self.stalled(ignore_angles):
            return False
        if sampling.step() < 0.75 * self.acc_rot and sampling.step() >= min_step:
            self.fine_enough = True
            return False
        if sampling.step() <= min_step:
            self.fine_enough = True
            return False
        old_step, old_range = sampling.offset_step, sampling.offset_range
        sampling.healpix_order += 1
        new_step = max(old_step / 2.0, min(1.5, 0.75 * self.acc_trans) * 2 ** sampling.oversampling)
        new_step = max(new_step, old_step / 2.0)
        new_range = min(1.3 * old_range, 3.0 * self.changes_offset)
        new_range = max(new_range, 1.5 * new_step)
        if new_range > 4 * new_step:
            new_range /= 2.0
            if new_range > 4 * new_step:
                new_step = new_range / 4.0
        if new_step > old_step:
            new_step, new_range = old_step, old_range
        sampling.offset_step, sampling.offset_range = new_step, new_range
        if sampling.healpix_order >= sampling.auto_local_order:
            sampling.local = True
            sampling.sigma_ang = 2.0 * sampling.step()
        self.iter_wo_resol_gain = 0
        self.iter_wo_large_changes = 0
        self.smallest_changes_orient = 999.0
        self.smallest_changes_offset = 999.0
        return True

    def check_convergence(self, ignore_angles=False):
        """At the start of an iteration: converged -> the next iteration is the final one."""
        if self.fine_enough and self.stalled(ignore_angles):
            self.converged = True
        return self.converged


def current_image_size(ori_size, res_shell, ave_pmax, fsc_at_limit, incr_size, shell_143=None, shell_05=None):
    """RELION's image-size schedule: ``2·(res_shell + Δ)``, even, at most ``ori_size``."""
    if ave_pmax > 0.1 and fsc_at_limit > 0.2:
        delta = int(0.25 * ori_size / 2)
    else:
        delta = incr_size
        if shell_143 is not None and shell_05 is not None:
            delta = max(delta, shell_143 - shell_05 + 5)
    size = 2 * (int(res_shell) + delta)
    size = min(size, ori_size)
    return size + (size % 2)


def coarse_image_size(ori_size, pixel_size, angular_step, diameter, current_size, coarse_size=-1):
    """Coarse (pass-1) image size: ``2·ceil(px·ori/coarse_res)`` with
    ``coarse_res = (step/360·π·D)/1.2``, capped by ``--coarse_size`` and the current size."""
    coarse_res = (angular_step / 360.0 * math.pi * diameter) / 1.2
    size = 2 * math.ceil(pixel_size * ori_size / coarse_res)
    if coarse_size > 0:
        size = min(size, coarse_size)
    return int(min(size, current_size))
