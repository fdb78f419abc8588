#!/bin/bash
#PBS -N sta
#PBS -q XXXqueueXXX
#PBS -l nodes=XXXnodesXXX:ppn=XXXdedicatedXXX
#PBS -l walltime=XXXextra1XXX
#PBS -o XXXoutfileXXX
#PBS -e XXXerrfileXXX
# sta / RELION queue template for PBS / Torque (qsub). Filled by sta_submit or by RELION's
# GUI ("Submit to queue"). Nodes are requested as ceil(ranks x threads / dedicated) with
# "dedicated" cores each: set the minimum dedicated cores to the cores of one node.
# extra1: walltime (e.g. 24:00:00); extra2: a set-up command run before the job, e.g.
# "module load mpi" (may be empty).
cd "$PBS_O_WORKDIR"
XXXextra2XXX
mpirun -n XXXmpinodesXXX XXXcommandXXX
