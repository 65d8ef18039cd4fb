"""The Python API: unlearn your own model on your own images, the same pipeline as the CLI.

    from kga_fast import unlearn_model
    unlearned, record = unlearn_model(my_resnet18, "~/my_images", forget=["cat/0001.png"],
                                      run_dir="runs/request-42", normalize="imagenet")
    unlearned, record = unlearn_model(..., method="ct")   # any method of kga_fast.methods

The default method is "recommended" (kga_fast.methods.RECOMMENDED): the method and setting that
met the most targets against a pool of retrains, with the measurement that chose it named there.

`unlearned` is a torchvision module of your model's architecture and key names (load it as you
loaded yours); `record` is the run's results.json record (evaluation, attacks, time, memory).
Everything is kept in `run_dir` as a CLI run would keep it (splits.json, the helper models, the
request itself, results.json, report.md), so the run is resumable and auditable, and
`scripts/report.py run_dir` rebuilds its report.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from kga_fast import accel
from kga_fast.checkpoint import load_model
from kga_fast.config import NORMALIZATIONS, PRETRAIN_PRESETS, RunConfig
from kga_fast.errors import UserError
from kga_fast.methods import METHODS, check_baseline_config, resolve
from kga_fast.methods.kga import UnlearnConfig
from kga_fast.methods.trained import BaselineConfig
from kga_fast.models import StagedNet, build_with_torchvision
from kga_fast.pipeline import Job, report, run_job
from kga_fast.pretrain import ensure_pretrained, needed_models
from kga_fast.run import open_run


def _arch_of(model: torch.nn.Module) -> str:
    if isinstance(model, StagedNet):
        return model.arch
    name = type(model).__name__.lower()  # torchvision: ResNet, VGG
    if name == "resnet":
        return "resnet18"
    if name == "vgg":
        return "vgg11"
    raise UserError(f"cannot tell the architecture of a {type(model).__name__}: pass arch=")


def _method_config(method: str, config) -> tuple[str, object]:
    """(method, config): "recommended" resolved, `config` or the method's preset; UserError for
    a method or config that cannot run here."""
    if method != "recommended" and (method not in METHODS or METHODS[method].preset is None):
        usable = ", ".join(["recommended", *(m for m, spec in METHODS.items() if spec.preset is not None)])
        raise UserError(f"unknown method {method!r} for unlearn_model; choose one of {usable}")
    method, config = resolve(method, config)
    if method == "kga":
        if not isinstance(config, UnlearnConfig):
            raise UserError("method kga takes an UnlearnConfig")
        return method, config
    if not isinstance(config, BaselineConfig) or config.method != method:
        raise UserError(f"method {method} takes a BaselineConfig with method={method!r}")
    return method, check_baseline_config(config)


def unlearn_model(
    model: torch.nn.Module | str | Path,
    data: str | Path,
    *,
    forget: list[str] | list[int] | str | Path,
    run_dir: str | Path,
    method: str = "recommended",
    config: UnlearnConfig | BaselineConfig | None = None,
    arch: str | None = None,
    freeze: tuple[int, ...] = (),
    seed: int = 0,
    retrain: bool = False,
    normalize: str | tuple | None = None,
    image_size: int = 32,
    helpers: str = "disjoint",
    new_fraction: float = 0.1,
    dataset: str = "folder",
    accelerator=None,
) -> tuple[torch.nn.Module, dict]:
    """Unlearn `forget` from `model` with `method` (module doc): "recommended" (the default:
    kga_fast.methods.RECOMMENDED, its method with its measured setting), KGA, or any trained
    method of kga_fast.methods.METHODS; `config` defaults to the method's preset.

    model: a torchvision resnet18 / vgg11 module, a StagedNet, or a weights file (--model).
    data: an ImageFolder tree (DIR/train/<class>/, DIR/test/<class>/), or the data folder of a
    built-in `dataset`. forget: paths relative to DIR/train, a file listing them (folder data),
    or train indices. normalize: your model's preprocessing ("imagenet", "cifar10", "unit" or
    (mean, std)); None: the train split's statistics. new_fraction: the share of the test folder
    that KGA's A_n trains on (D_n; the rest, D_t, is held out). retrain=True also trains A_r and reports
    against it (research mode); the default is a deletion request's mode: no retraining.
    """
    method, config = _method_config(method, config)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(model, str | Path):
        weights = Path(model)
        if arch is None:
            raise UserError("a model given as a file needs arch= (resnet18, vgg11, ...)")
    else:
        arch = arch or _arch_of(model)
        weights = run_dir / "input_model.safetensors"  # the model as given: A_d's source
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(weights))
    request: dict = {}
    if isinstance(forget, str | Path):
        request["forget_list"] = str(forget)
    elif forget and all(isinstance(f, int) for f in forget):
        path = run_dir / "forget_indices.json"
        path.write_text(json.dumps(sorted(forget)))
        request["forget_index_file"] = str(path)
    else:
        path = run_dir / "forget_list.txt"
        path.write_text("".join(f"{f}\n" for f in forget))
        request["forget_list"] = str(path)
    if isinstance(normalize, str):
        normalize = NORMALIZATIONS[normalize]
    cfg = RunConfig(
        run_dir=run_dir,
        dataset=dataset,
        data_dir=str(data),
        arch=arch,
        seed=seed,
        model=str(weights),
        image_size=image_size,
        normalize=normalize,
        helpers=helpers,
        new_fraction=new_fraction,
        pretrain=PRETRAIN_PRESETS["default"],
        **request,
    )
    accelerator = accelerator or accel.make_accelerator(None)
    run = open_run(cfg, accelerator)
    names = needed_models(cfg, retrain=retrain, helpers=method == "kga")
    models = ensure_pretrained(run, accelerator, names=names)
    job = Job(method, config, [tuple(freeze)], [seed], retrain=retrain)
    (record,) = run_job(run, models, job, accelerator)
    report(run, accelerator)
    star, _ = load_model(run_dir, Path(record["checkpoint"]).stem)
    staged, torchvision_net = build_with_torchvision(arch, run.num_classes, run.in_channels)
    staged.load_state_dict(star.state_dict())
    return (staged if isinstance(model, StagedNet) else torchvision_net).eval(), record
