#!/bin/bash
#$ -N sta
#$ -pe XXXqueueXXX XXXcoresXXX
#$ -l h_rt=XXXextra1XXX
#$ -e XXXerrfileXXX
#$ -o XXXoutfileXXX
#$ -cwd
#$ -S /bin/bash
# sta / RELION queue template for SGE / Grid Engine (qsub). Filled by sta_submit or by
# RELION's GUI ("Submit to queue"). The queue name is the parallel environment (as in
# RELION's qsub.csh); ranks x threads slots are requested. extra1: run-time limit
# (e.g. 24:00:00); extra2: a set-up command run before the job (may be empty).
XXXextra2XXX
mpirun -n XXXmpinodesXXX XXXcommandXXX
