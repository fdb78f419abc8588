#!/bin/bash
#BSUB -J sta
#BSUB -q XXXqueueXXX
#BSUB -n XXXcoresXXX
#BSUB -W XXXextra1XXX
#BSUB -o XXXoutfileXXX
#BSUB -e XXXerrfileXXX
# sta / RELION queue template for IBM Spectrum LSF (submit with: bsub <). Filled by
# sta_submit or by RELION's GUI ("Submit to queue"). Ranks x threads slots are requested;
# to fill whole hosts add '#BSUB -R "span[ptile=N]"' above. extra1: run-time limit [hh:]mm
# (e.g. 24:00); extra2: a set-up command run before the job (may be empty).
XXXextra2XXX
mpirun -n XXXmpinodesXXX XXXcommandXXX
