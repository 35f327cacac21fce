# The design card's FLUX.2 recipe: RTDMD on FLUX.2-klein 4B at 512 px, stage 1 (AC-DMD) then
# stage 2 (K = 24, 64 prompts per epoch, fake lr 1e-6, consistency on). Same as
# configs/rtdmd/flux2_klein_4b_4step.py; the 9B recipe is configs/rtdmd/flux2_klein_9b_4step.py.
_base_ = ['./flux2_klein_4b_4step.py']
