"""Lets test_bagpipe_example.py see the losses of trainer_simple.py, which keeps them to itself: in a
process whose environment has BAGPIPE_LOSS_LOG (a directory), every BCELoss it computes is appended to
<dir>/<pid>.txt.  The test puts this directory first on PYTHONPATH of the trainers only."""

import os

if os.environ.get("BAGPIPE_LOSS_LOG"):
    import torch

    _forward = torch.nn.BCELoss.forward

    def _logged(self, input, target):
        loss = _forward(self, input, target)
        with open(os.path.join(os.environ["BAGPIPE_LOSS_LOG"], f"{os.getpid()}.txt"), "a") as log:
            log.write(f"{loss.item()!r}\n")
        return loss

    torch.nn.BCELoss.forward = _logged
