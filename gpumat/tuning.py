"""Where tuned kernel parameters live: shipped defaults plus the per-device winners of
``python -m gpumat.tune``.

Tuned parameters are stored in ``<cache dir>/sgemm_tuning.json`` (the cache dir is
``platformdirs.user_cache_dir("gpumat")``, or ``$GPUMAT_TUNING_DIR`` when set), one entry per
device key (platform | device | driver, so a driver update asks for a re-tune).  Lookup order,
as CLBlast's database does it: the tuned entry for this exact device, then the shipped
``tuning_defaults.json`` by device name, by vendor, and by device type.  Parameters only choose
how the work is split (tile sizes, vector widths, packing), never what is computed, so a
result changes at most by float rounding.
"""
import json
import os
from pathlib import Path

ENV_VAR = "GPUMAT_TUNING_DIR"
FILE_NAME = "sgemm_tuning.json"
#: every parameter of kernels/common/sgemm.h the host passes, plus PACK_B (host side)
KEYS = ("MWI", "NWI", "VW", "KWI", "WGM", "WGN", "USE_LOCAL", "KWG", "PACK_B")

_SHIPPED = None


def tuning_dir():
    override = os.environ.get(ENV_VAR)
    if override:
        return Path(override).expanduser()
    import platformdirs
    return Path(platformdirs.user_cache_dir("gpumat"))


def tuning_file():
    return tuning_dir() / FILE_NAME


def shipped():
    global _SHIPPED
    if _SHIPPED is None:
        with open(Path(__file__).with_name("tuning_defaults.json"), encoding="utf-8") as f:
            _SHIPPED = json.load(f)
    return _SHIPPED


def load_tuned():
    """{device key: entry} from the user's tuning file ({} when absent or unreadable)."""
    try:
        with open(tuning_file(), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_tuned(device_key, params, **info):
    """Store ``params`` as the winner for ``device_key``; returns the file's path."""
    path = tuning_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    data = load_tuned()
    data[device_key] = dict(info, params={k: int(params[k]) for k in KEYS if k in params})
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)
    return path


#: what each parameter may be (the kernel loops step by KWI and KWG, so 0 never ends them)
_RANGES = {"MWI": range(1, 65), "NWI": range(1, 65), "VW": (1, 2, 4, 8, 16),
           "KWI": range(1, 65), "WGM": range(1, 1025), "WGN": range(1, 1025),
           "USE_LOCAL": (0, 1), "KWG": range(1, 4097), "PACK_B": (0, 1)}


def problems(params, max_group=None, local_bytes=None):
    """What is wrong with a set of parameters (an empty list if nothing): a missing or
    non-integer value, one out of its range, or (where the device's limits are given) a
    work-group larger than the device runs or a B stage larger than its local memory in
    either precision."""
    found = []
    for key in KEYS:
        value = params.get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            found.append(f"{key} must be an integer, got {value!r}")
        elif value not in _RANGES[key]:
            allowed = _RANGES[key]
            allowed = (f"{allowed.start}..{allowed.stop - 1}" if isinstance(allowed, range)
                       else ", ".join(map(str, allowed)))
            found.append(f"{key} = {value} is outside {allowed}")
    if found:
        return found
    if max_group is not None and params["WGM"] * params["WGN"] > max_group:
        found.append(f"WGM x WGN = {params['WGM'] * params['WGN']} work-items exceeds the "
                     f"device's work-group limit {max_group}")
    # the B stage holds KWG x WGN x NWI vectors: VW floats, or max(VW / 2, 1) doubles
    vector_bytes = max(params["VW"] * 4, max(params["VW"] // 2, 1) * 8)
    stage = params["KWG"] * params["WGN"] * params["NWI"] * vector_bytes
    if local_bytes is not None and params["USE_LOCAL"] and stage > local_bytes:
        found.append(f"the B stage (KWG x WGN x NWI vectors of {vector_bytes} bytes = {stage} "
                     f"bytes) exceeds the device's {local_bytes} bytes of local memory")
    return found


def lookup(device_key, device_name, vendor_names, device_type, max_group=None,
           local_bytes=None):
    """(parameters, source) for a device; source says which entry supplied them.  A tuned
    entry that is not usable (see :func:`problems`: hand-edited, or from another device) is
    ignored with a warning naming the file and the values: a zero step would never end the
    kernel's loops, a stage past local memory aborts the driver."""
    table = shipped()
    params = dict(table["types"].get(device_type) or table["types"]["gpu"])
    source = f"shipped default for {device_type}"
    for vendor, entry in table.get("vendors", {}).items():
        if any(vendor.lower() in (v or "").lower() for v in vendor_names):
            params.update(entry)
            source = f"shipped vendor entry {vendor!r}"
            break
    entry = table.get("devices", {}).get(device_name)
    if entry:
        params.update(entry)
        source = f"shipped device entry {device_name!r}"
    tuned = load_tuned().get(device_key)
    if isinstance(tuned, dict) and isinstance(tuned.get("params"), dict):
        candidate = dict(params, **{k: v for k, v in tuned["params"].items() if k in KEYS})
        wrong = problems(candidate, max_group, local_bytes)
        if wrong:
            from .backends import warn_once
            warn_once(f"tuning-file {tuning_file()} {device_key}",
                      f"gpumat: ignoring the tuned gemm parameters for {device_key!r} in "
                      f"{tuning_file()} ({'; '.join(wrong)}); using the {source} instead. "
                      f"Re-run python -m gpumat.tune or delete the entry.", stacklevel=2)
        else:
            params = candidate
            source = f"tuned ({tuning_file()})"
    return params, source
