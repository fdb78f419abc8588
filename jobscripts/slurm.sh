#!/bin/bash
#SBATCH --job-name=XXXnameXXX
#SBATCH --partition=XXXqueueXXX
#SBATCH --ntasks=XXXmpinodesXXX
#SBATCH --cpus-per-task=XXXthreadsXXX
#SBATCH --time=XXXextra1XXX
#SBATCH --output=XXXoutfileXXX
#SBATCH --error=XXXerrfileXXX
#SBATCH --open-mode=append
# sta / RELION queue template for SLURM (sbatch). Filled by sta_submit or by RELION's GUI
# ("Submit to queue"). extra1: time limit (e.g. 1-00:00:00); extra2: a set-up command run
# before the job, e.g. "source ~/sta-env/bin/activate" (may be empty). GPUs: add a
# "#SBATCH --gres=gpu:N" line above. MPI ranks x threads = the cores reserved.
XXXextra2XXX
mpirun -n XXXmpinodesXXX XXXcommandXXX
