"""Unlearn a deletion request from your own model with the Python API.

    python examples/own_model.py --data-dir ~/my_images --model my_resnet18.pt \
        --forget-list delete_these.txt --run-dir runs/request-42

`my_resnet18.pt` is `torch.save(model.state_dict(), path)` of a torchvision resnet18 trained on
`~/my_images/train` (an ImageFolder tree); `delete_these.txt` names the images to forget, one
path per line relative to `~/my_images/train`. Prints what changed and saves the unlearned
model's state dict, with your model's key names, beside the run. The method is the recommended
one (kga_fast.methods.RECOMMENDED) unless --method names another.
"""

import argparse
import dataclasses
import os
import sys

import torch
from torchvision.models import resnet18

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from kga_fast import unlearn_model  # noqa: E402
from kga_fast.methods import resolve  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--data-dir", required=True)
parser.add_argument("--model", required=True, help="state dict of a torchvision resnet18")
parser.add_argument("--forget-list", required=True)
parser.add_argument("--run-dir", required=True)
parser.add_argument("--normalize", default="imagenet", help="the preprocessing the model was trained with")
parser.add_argument(
    "--method", default="recommended", help="recommended, kga, or a method of kga_fast.methods"
)
parser.add_argument("--epochs", type=int, default=None, help="override the method's epochs")
args = parser.parse_args()
method, config = resolve(args.method)  # the method's setting, with a batch for small folders
config = dataclasses.replace(
    config, batch_size=16, **({} if args.epochs is None else {"epochs": args.epochs})
)

state = torch.load(args.model, map_location="cpu", weights_only=True)
model = resnet18(num_classes=state["fc.weight"].shape[0])
model.load_state_dict(state)

unlearned, record = unlearn_model(
    model,
    args.data_dir,
    forget=args.forget_list,
    run_dir=args.run_dir,
    method=method,
    config=config,
    normalize=args.normalize,
)

acc = {split: record["eval"][split]["accuracy"] for split in ("forget", "test")}
print(f"accuracy on the forgotten images: {acc['forget']['Ad']:.3f} -> {acc['forget']['A*']:.3f}")
print(f"accuracy on held-out test images: {acc['test']['Ad']:.3f} -> {acc['test']['A*']:.3f}")
print(f"unlearning took {record['unlearn_seconds']:.1f} s; report: {args.run_dir}/report.md")
out = os.path.join(args.run_dir, "unlearned_state_dict.pt")
torch.save(unlearned.state_dict(), out)  # loads into resnet18() like your own checkpoint
print(f"unlearned model: {out}")
