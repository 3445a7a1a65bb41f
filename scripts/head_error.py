"""How much error each learning head sends back into its block, from a checkpoint and 64 test images.

A head whose weights are the same for every class (the part `W.mean(axis=0)` explains) predicts the class
prior, and since its errors sum to zero over the classes for every image, that shared part sends no error
into the block: the block can then learn only through the class-specific rest of its head. The table shows
that split per block, with the number of distinct values of the block's scaled pre-activations.

    python scripts/head_error.py results/vgg/vgg8b_mnist/paper/0/checkpoints/last.npz
"""

from __future__ import annotations

import argparse

import numpy as np

from nitro_cli.data import Normalizer, load_dataset, one_hot
from nitro_cli.nn.layers import nitro_relu
from nitro_cli.nn.model import LocalBlock
from nitro_cli.runner import load_checkpoint
from nitro_cli.runner.evaluate import model_from_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--images", type=int, default=64, help="test images to use (default 64)")
    args = parser.parse_args()
    ckpt = load_checkpoint(args.checkpoint)
    model = model_from_checkpoint(ckpt)
    normalizer = Normalizer.from_state_dict(ckpt.section("norm/", strip=True))
    data = load_dataset(ckpt.state["config"]["data"]["name"])
    x = normalizer.apply(data.test_x[: args.images])
    y = one_hot(data.test_y[: args.images], model.num_classes).astype(np.int64)
    h = np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if model.channels_last else x
    print(f"{'block':8} {'mean|W|':>8} {'head mean|W|':>13} {'shared part':>12} {'mean|error in|':>15} "
          f"{'from shared':>12} {'distinct pre':>13}")
    for stage in model.stages:
        if not isinstance(stage, LocalBlock):
            h = stage.forward(h)
            continue
        pre = model.arith.forward_scaled(stage.layer, h)
        h = nitro_relu(pre, stage.slope)
        delta = model.arith.loss_error(stage.head_forward(h), y).astype(np.int64)
        w = stage.head.weight.astype(np.int64)  # [classes, features]
        shared = np.broadcast_to(w.mean(axis=0), w.shape)
        print(f"{stage.name:8} {np.abs(stage.layer.weight).mean():8.1f} {np.abs(w).mean():13.1f} "
              f"{np.abs(shared).mean() / np.abs(w).mean():12.0%} {np.abs(delta @ w).mean():15.1f} "
              f"{np.abs(delta @ shared).mean():12.1f} {len(np.unique(pre)):13d}")


if __name__ == "__main__":
    main()
