"""Saving models and training checkpoints as ``.npz`` files: NumPy arrays plus one JSON
metadata entry, never pickle, written atomically.

    nn.save(model, "lenet5.npz")                  # the state_dict, PyTorch's names as keys
    nn.load_into(model, "lenet5.npz")             # checked names and shapes, then loaded
    weights = nn.load_state("lenet5.npz")         # {name: numpy.ndarray}

    nn.save_checkpoint("run/epoch7.npz", model, opt, sched, epoch=7, extra={"loss": [...]})
    info = nn.load_checkpoint("run/epoch7.npz", model, opt, sched)   # {"epoch": 7, "extra": ...}

File format (version 1).  A zip of ``.npy`` members, as ``numpy.savez`` writes, readable by
``numpy.load(path, allow_pickle=False)``:

* ``__gpumat__``: a 1-d uint8 array holding UTF-8 JSON, ``{"format": "gpumat", "version": 1,
  "kind": "state_dict" | "checkpoint", ...}``.
* a model file (``kind: state_dict``): one member per state_dict entry, named as in
  PyTorch (``conv1.weight``, ``bn1.num_batches_tracked``), dtype and shape exactly as the
  model holds them (bit-exact floats, int64 counters, 0-d arrays).  Any other ``.npz`` of
  arrays (``numpy.savez(path, **torch_model.state_dict())`` after ``.numpy()``) loads too.
* a checkpoint (``kind: checkpoint``): the model's entries as ``model/<name>``; the
  metadata holds the epoch, ``extra``, the optimizer's, scheduler's and data loader's
  ``state_dict()``, gpumat's random generator state and the model's configuration (each
  module's name, class and hyper-parameters, checked on loading).  Those states are trees
  of dicts, lists, numbers and strings, encoded in the JSON; the arrays inside them (momentum
  buffers, Adam's moments) are members named by their place in the tree
  (``optimizer/state/3/momentum_buffer``) and referenced from the JSON as
  ``{"__array__": member}``; tuples and dicts with non-string keys are tagged
  (``{"__tuple__": [...]}``, ``{"__items__": [[key, value], ...]}``) so they come back as
  they were.

Extension point (bit-packed weights of binary layers).  A module may define both
``_save_arrays(self, arrays)`` and ``_load_arrays(self, arrays)``.  ``nn.save`` hands the
first the module's own state entries (unprefixed names, e.g. ``{"weight": ndarray, "bias":
ndarray}``, sub-modules excluded) as NumPy arrays and writes the dict it returns instead
(e.g. ``{"weight_bits": packed uint8, "bias": ...}``; names without dots); ``nn.load_into``
hands the second what was stored under the module's prefix and loads the dict it returns,
which must hold the module's state entries again.  Model files only: ``nn.load_state``
returns the entries as stored, and checkpoints always store the exact training state
(resuming must be bit-exact), so the hooks never run there.
"""
import contextlib
import json
import os
import secrets
import zipfile
from collections import OrderedDict

import numpy as np

from .. import random as _random
from ..array import Array
from ..errors import GpumatError
from .autograd import Variable
from .module import Module

__all__ = ["save", "load_into", "load_state", "save_checkpoint", "load_checkpoint",
           "CheckpointError"]

FORMAT = "gpumat"
VERSION = 1
METADATA_KEY = "__gpumat__"
MODEL_PREFIX = "model/"
_TAGS = ("__array__", "__tuple__", "__items__")


class CheckpointError(GpumatError, ValueError):
    """A model file or checkpoint that cannot be read or does not fit what it is loaded
    into; the message names the file and the problem."""


# ---- writing ------------------------------------------------------------------------------------

def atomic_write(path, write):
    """Call ``write(binary file)`` on a new file beside ``path``, then move it onto ``path``
    in one step (``os.replace``), so readers never see a half-written file and a failure
    leaves the previous file intact."""
    path = os.fspath(path)
    directory, name = os.path.split(os.path.abspath(path))
    temporary = os.path.join(directory, f".{name}.{secrets.token_hex(6)}.tmp")
    # os.open applies the umask, so the file gets the permissions a plain open() would give
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def _write_npz(path, arrays, metadata):
    if METADATA_KEY in arrays:
        raise ValueError(f"cannot save an entry named {METADATA_KEY!r} (gpumat's metadata)")
    text = json.dumps(dict(metadata, format=FORMAT, version=VERSION), allow_nan=True)
    members = {METADATA_KEY: np.frombuffer(text.encode("utf-8"), np.uint8), **arrays}

    def write(file):
        # numpy.savez's layout, written member by member: its keyword interface would
        # reject entries named "file" or "allow_pickle"
        with zipfile.ZipFile(file, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for key, value in members.items():
                with archive.open(key + ".npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, value, allow_pickle=False)

    atomic_write(path, write)


def _host(value, what):
    """``value`` (an Array, a Variable, a NumPy array or array-like) as a NumPy array."""
    if isinstance(value, Variable):
        value = value.data
    host = value.gather() if isinstance(value, Array) else np.asarray(value)
    if host.dtype.kind not in "biuf":
        raise TypeError(f"{what} holds data of dtype {host.dtype}, which a gpumat file cannot "
                        f"store (booleans, integers and floats only)")
    return host


def _own(arrays, prefix):
    """The entries of ``arrays`` that belong to the module at ``prefix`` itself (not to its
    sub-modules), by their unprefixed names."""
    dot = f"{prefix}." if prefix else ""
    return {key[len(dot):]: key for key in arrays
            if key.startswith(dot) and "." not in key[len(dot):]}


def _apply_hooks(model, arrays, hook_name, path=None):
    """``arrays`` with each module's entries replaced by what its ``hook_name`` hook returns
    (the extension point described in the module docstring).  A CheckpointError a hook
    raises is raised again with the file and the module's name in front."""
    arrays = OrderedDict(arrays)
    for prefix, module in model.named_modules():
        hook = getattr(module, hook_name, None)
        if hook is None:
            continue
        own = _own(arrays, prefix)
        try:
            replaced = hook({name: arrays.pop(key) for name, key in own.items()})
        except CheckpointError as error:
            where = f"{path}: " if path is not None else ""
            inside = f"{prefix}: " if prefix else ""
            raise CheckpointError(f"{where}{inside}{error}") from error
        for name, value in replaced.items():
            if "." in name:
                raise ValueError(f"{type(module).__name__}.{hook_name} returned the name "
                                 f"{name!r}; entry names of one module contain no dots")
            arrays[f"{prefix}.{name}" if prefix else name] = np.asarray(value)
    return arrays


def save(model_or_state_dict, path):
    """Write a model's ``state_dict()`` (or a state_dict itself: names to Arrays, NumPy
    arrays or tensors) to ``path`` as an ``.npz`` file (the name is used as given)."""
    if isinstance(model_or_state_dict, Module):
        state = {k: _host(v, k) for k, v in model_or_state_dict.state_dict().items()}
        state = _apply_hooks(model_or_state_dict, state, "_save_arrays")
    else:
        state = {str(k): _host(v, k) for k, v in dict(model_or_state_dict).items()}
    _write_npz(path, state, {"kind": "state_dict"})


# ---- reading ------------------------------------------------------------------------------------

def _read_npz(path):
    """(metadata dict or None, OrderedDict of every other member) of the file at ``path``."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such gpumat model or checkpoint file")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a gpumat model or checkpoint (an .npz file); "
                              f"it is not a zip archive at all")
    arrays = OrderedDict()
    try:
        with np.load(path, allow_pickle=False) as archive:
            for key in archive.files:
                arrays[key] = archive[key]
    except (ValueError, OSError, zipfile.BadZipFile) as error:
        raise CheckpointError(f"{path}: not a readable .npz file ({error})") from error
    for key, value in arrays.items():
        if not isinstance(value, np.ndarray):
            raise CheckpointError(
                f"{path}: not a gpumat model or checkpoint: the member {key!r} is not a NumPy "
                f"array (a PyTorch .pt file is a zip of pickles; export its state_dict with "
                f"numpy.savez(path, **{{k: v.numpy() for k, v in state_dict.items()}}))")
    raw = arrays.pop(METADATA_KEY, None)
    if raw is None:
        return None, arrays
    try:
        metadata = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: the {METADATA_KEY} entry is not UTF-8 JSON "
                              f"({error})") from error
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path}: the {METADATA_KEY} entry does not describe a gpumat "
                              f"file")
    version = metadata.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(f"{path}: written in gpumat file format version {version!r}; "
                              f"this gpumat reads versions up to {VERSION}")
    return metadata, arrays


def _model_entries(metadata, arrays):
    """The model's state entries of a file's members (a checkpoint's are under ``model/``)."""
    if metadata is not None and metadata.get("kind") == "checkpoint":
        return OrderedDict((k[len(MODEL_PREFIX):], v) for k, v in arrays.items()
                           if k.startswith(MODEL_PREFIX))
    return arrays


def load_state(path):
    """The state_dict stored at ``path`` (a model file, a checkpoint's model, or any .npz of
    arrays) as an OrderedDict of names to NumPy arrays, as stored."""
    return _model_entries(*_read_npz(path))


def _check_fits(model, state, path, strict):
    """Raise a CheckpointError listing every missing, unexpected or mis-shaped entry."""
    own = model.state_dict()
    problems = []
    if strict:
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if missing:
            problems.append("missing " + ", ".join(missing))
        if unexpected:
            problems.append("unexpected " + ", ".join(unexpected))
    shapes = [f"{k} is {tuple(state[k].shape)} in the file but {tuple(v.shape)} in the model"
              for k, v in own.items() if k in state and tuple(state[k].shape) != v.shape]
    if shapes:
        problems.append("shape mismatch: " + "; ".join(shapes))
    if problems:
        raise CheckpointError(f"{path}: does not fit {type(model).__name__} (a different "
                              f"architecture?): " + "; ".join(problems))


def load_into(model, path, strict=True):
    """Load the state stored at ``path`` into ``model`` (through ``load_state_dict``, so
    each entry keeps its backend and dtype).  Names and shapes are checked first: with
    ``strict``, a missing or unexpected name is an error; a shape mismatch always is.
    Returns (missing, unexpected) names."""
    state = _apply_hooks(model, load_state(path), "_load_arrays", os.fspath(path))
    _check_fits(model, state, os.fspath(path), strict)
    return model.load_state_dict(state, strict=strict)


# ---- checkpoints --------------------------------------------------------------------------------

def _encode(value, where, arrays):
    """``value`` as JSON-ready data; arrays inside it go into ``arrays`` under a member name
    made from ``where`` (its place in the tree)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (Array, Variable, np.ndarray)):
        name, n = where, 1
        while name in arrays:
            n += 1
            name = f"{where}#{n}"
        arrays[name] = _host(value, where)
        return {"__array__": name}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, f"{where}/{i}", arrays) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{where}/{i}", arrays) for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and not any(k in _TAGS for k in value):
            return {k: _encode(v, f"{where}/{k}", arrays) for k, v in value.items()}
        return {"__items__": [[_encode(k, f"{where}/key", arrays),
                               _encode(v, f"{where}/{k}", arrays)] for k, v in value.items()]}
    raise TypeError(f"save_checkpoint: {where} holds a {type(value).__name__}, which a "
                    f"checkpoint cannot store (None, bools, numbers, strings, lists, tuples, "
                    f"dicts and arrays only)")


def _decode(value, arrays, path):
    if isinstance(value, list):
        return [_decode(v, arrays, path) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        (tag, content), = value.items()
        if tag == "__array__":
            if content not in arrays:
                raise CheckpointError(f"{path}: the metadata refers to the array {content!r}, "
                                      f"which the file does not hold")
            return arrays[content]
        if tag == "__tuple__":
            return tuple(_decode(v, arrays, path) for v in content)
        if tag == "__items__":
            return {_decode(k, arrays, path): _decode(v, arrays, path) for k, v in content}
    return {k: _decode(v, arrays, path) for k, v in value.items()}


def _owners(what, optimizer, scheduler, loader):
    """(role, object) of each given optimizer, scheduler and loader, checked to be savable."""
    owners = []
    for role, owner in (("optimizer", optimizer), ("scheduler", scheduler), ("loader", loader)):
        if owner is None:
            continue
        if not (callable(getattr(owner, "state_dict", None))
                and callable(getattr(owner, "load_state_dict", None))):
            raise TypeError(f"{what}: the {role} must have state_dict() and load_state_dict(), "
                            f"got {type(owner).__name__}")
        owners.append((role, owner))
    return owners


def _parameter_shapes(optimizer):
    return [list(p.shape) for group in optimizer.param_groups for p in group["params"]]


def save_checkpoint(path, model, optimizer=None, scheduler=None, epoch=None, extra=None,
                    loader=None):
    """Write everything resuming a training run needs to ``path`` (one .npz file, replaced
    atomically): the model's state, the optimizer's (hyper-parameters, step counts, momentum
    and moment buffers), the scheduler's, the data ``loader``'s (any object with
    ``state_dict``/``load_state_dict``), gpumat's random generator state, the model's
    configuration (each module's class and hyper-parameters), ``epoch`` and ``extra`` (a
    dict of JSON-able values such as a metrics history)."""
    arrays = OrderedDict((MODEL_PREFIX + k, _host(v, k)) for k, v in model.state_dict().items())
    metadata = {"kind": "checkpoint", "model_class": type(model).__name__,
                "modules": _module_configuration(model),
                "epoch": _encode(epoch, "epoch", arrays),
                "extra": _encode(extra, "extra", arrays),
                "rng": _random.GLOBAL.get_state()}
    for role, owner in _owners("save_checkpoint", optimizer, scheduler, loader):
        metadata[role] = {"class": type(owner).__name__,
                          "state": _encode(owner.state_dict(), role, arrays)}
    if optimizer is not None:
        metadata["optimizer"]["parameter_shapes"] = _parameter_shapes(optimizer)
    _write_npz(path, arrays, metadata)


def _module_configuration(model):
    """Every module's name, class and hyper-parameters (its ``extra_repr``): what a state
    dict does not show -- a float Conv2d and a BinaryConv2d in "bwn" mode hold the same
    entries, and so do ReLU and Tanh models."""
    return [[name, type(module).__name__, module.extra_repr()]
            for name, module in model.named_modules()]


def _check_configuration(model, metadata, path):
    """Resuming trains on from the saved state, so the model must be the one that was saved:
    the same modules with the same hyper-parameters (checkpoints from before this check was
    added hold no configuration and are not checked)."""
    saved = metadata.get("modules")
    if saved is None:
        return
    ours = _module_configuration(model)

    def differ(message):
        raise CheckpointError(f"{path}: the checkpoint was written by a different model: "
                              f"{message} (build the same model to resume it, e.g. with the "
                              f"same --binary mode; nn.load_into loads a model file's weights "
                              f"into another model)")

    for index, (theirs, mine) in enumerate(zip(saved, ours)):
        theirs = list(theirs)
        if theirs == mine:
            continue
        if theirs[0] == mine[0]:
            what = f"module {mine[0]!r}" if mine[0] else "the model"
            differ(f"{what} is {theirs[1]}({theirs[2]}) in the checkpoint but "
                   f"{mine[1]}({mine[2]}) in this model")
        differ(f"module #{index} is {theirs[0]!r} ({theirs[1]}) in the checkpoint but "
               f"{mine[0]!r} ({mine[1]}) in this model")
    if len(saved) != len(ours):
        differ(f"the checkpoint's model has {len(saved)} modules, this one {len(ours)}")


def _check_saved(role, owner, metadata, path):
    """The saved state of ``role``, after checking it was saved for an owner like this one."""
    saved = metadata.get(role)
    if saved is None:
        raise CheckpointError(f"{path}: the checkpoint holds no {role} state, but a {role} "
                              f"({type(owner).__name__}) was given to restore")
    if saved["class"] != type(owner).__name__:
        raise CheckpointError(f"{path}: the checkpoint's {role} is {saved['class']}, this one "
                              f"is {type(owner).__name__}")
    if role == "optimizer" and saved["parameter_shapes"] != _parameter_shapes(owner):
        raise CheckpointError(f"{path}: the checkpoint's optimizer has parameters of shapes "
                              f"{saved['parameter_shapes']}, this one "
                              f"{_parameter_shapes(owner)}")
    return saved["state"]


def load_checkpoint(path, model, optimizer=None, scheduler=None, loader=None):
    """Restore a checkpoint written by ``save_checkpoint`` into ``model`` and whichever of
    ``optimizer``, ``scheduler`` and ``loader`` are given (each must have been saved), and
    gpumat's random generator.  The model must match exactly (its modules' classes and
    hyper-parameters, and its entries' names and shapes).  Returns
    ``{"epoch": ..., "extra": ...}``."""
    path = os.fspath(path)
    metadata, arrays = _read_npz(path)
    if metadata is None or metadata.get("kind") != "checkpoint":
        held = "a model state_dict" if metadata is not None else "arrays without gpumat metadata"
        raise CheckpointError(f"{path}: not a gpumat checkpoint (it holds {held}; load "
                              f"weights with nn.load_into)")
    _check_configuration(model, metadata, path)
    state = _model_entries(metadata, arrays)
    _check_fits(model, state, path, strict=True)
    # everything is checked before anything changes, so a mismatch leaves all as it was
    restores = [(role, owner, _check_saved(role, owner, metadata, path))
                for role, owner in _owners("load_checkpoint", optimizer, scheduler, loader)]
    model.load_state_dict(state)
    for role, owner, saved in restores:
        try:
            owner.load_state_dict(_decode(saved, arrays, path))
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(f"{path}: cannot restore the {role} "
                                  f"({type(owner).__name__}): {error}") from error
    _random.GLOBAL.set_state(metadata["rng"])
    return {"epoch": _decode(metadata.get("epoch"), arrays, path),
            "extra": _decode(metadata.get("extra"), arrays, path)}
