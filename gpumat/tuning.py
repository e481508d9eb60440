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


def lookup(device_key, device_name, vendor_names, device_type):
    """(parameters, source) for a device; source says which entry supplied them."""
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
        params.update({k: int(v) for k, v in tuned["params"].items() if k in KEYS})
        source = f"tuned ({tuning_file()})"
    return params, source
