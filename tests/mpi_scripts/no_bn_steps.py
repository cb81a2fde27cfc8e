"""Under mpirun: a model without batch norm trained on each rank's half of every global batch must take
the same steps as one process on the whole batches (which rank 0 also runs, as the reference)."""
import sys

import numpy as np

from cnn_cifar import nn
from cnn_cifar.distributed import DataParallel, MPICommunicator
from cnn_cifar.optim import SGD
from cnn_cifar.training import train_step


def net(seed):
    rng = np.random.default_rng(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, rng=rng), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 5, rng=rng)).to(np.float64)


comm = MPICommunicator()
rng = np.random.default_rng(1)
per = 3
batches = [(rng.normal(size=(per * comm.size, 3, 8, 8)), rng.integers(0, 5, per * comm.size)) for _ in range(5)]
model = net(comm.rank)                    # different on each rank until the broadcast
par = DataParallel(model, comm)
par.broadcast_state()
opt = SGD(list(model.parameters()), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
sl = slice(comm.rank * per, (comm.rank + 1) * per)
losses = [train_step(model, nn.SoftmaxCrossEntropy(), opt, x[sl], y[sl], parallel=par)[0] for x, y in batches]
if comm.rank == 0:
    ref = net(0)
    ref_opt = SGD(list(ref.parameters()), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
    ref_losses = [train_step(ref, nn.SoftmaxCrossEntropy(), ref_opt, x, y)[0] for x, y in batches]
    mine, theirs = model.state_dict(), ref.state_dict()
    diff = max(float(np.abs(mine[k] - theirs[k]).max() / np.abs(theirs[k]).max()) for k in theirs)
    loss_diff = max(abs(a - b) for a, b in zip(losses, ref_losses))
    print(f"ranks {comm.size}: max relative weight difference {diff:.3g}, loss difference {loss_diff:.3g}")
    sys.exit(0 if diff < 1e-10 and loss_diff < 1e-12 else 1)
