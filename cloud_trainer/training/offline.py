"""Make ultralytics work with no internet: no font, weight, hub or pip downloads.

Must run before ``ultralytics`` is imported, because it reads its settings at import time.
Each download path found, and what closes it:
- fonts (``Arial.ttf`` for plots and labels): a local TTF under that name in its config dir;
- hub/analytics sync: ``settings.sync = False`` and ``YOLO_OFFLINE``;
- auto-installing missing packages: ``YOLO_AUTOINSTALL=False``;
- pretrained weights: we build models from ``*.yaml`` or our own ``.pt`` files only;
- AMP checks (download ``yolo11n.pt``): ``amp=False`` in every train call.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from shared.errors import LinefleetError

FONT_NAMES = ("Arial.ttf", "Arial.Unicode.ttf")


class OfflineSetupError(LinefleetError):
    """The offline environment for ultralytics could not be prepared."""


def _local_font() -> Path:
    import matplotlib  # noqa: PLC0415 - only the trainer has it

    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    if not font.is_file():
        raise OfflineSetupError(f"no local TTF font found at {font}")
    return font


def prepare_offline_ultralytics(work_dir: Path) -> Path:
    """Point ultralytics' config, caches and fonts into ``work_dir``; return its config dir."""
    config_dir = (work_dir / "ultralytics-config").resolve()
    font_dir = config_dir / "Ultralytics"
    font_dir.mkdir(parents=True, exist_ok=True)
    font = _local_font()
    for name in FONT_NAMES:
        target = font_dir / name
        if not target.exists():
            shutil.copyfile(font, target)
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "False"
    os.environ["YOLO_VERBOSE"] = os.environ.get("YOLO_VERBOSE", "False")
    os.environ.setdefault("MPLCONFIGDIR", str(config_dir / "matplotlib"))
    os.environ.setdefault("XDG_CACHE_HOME", str(config_dir / "cache"))
    os.environ.setdefault("MPLBACKEND", "Agg")
    from ultralytics import settings  # noqa: PLC0415 - must follow the environment above

    settings.update({"sync": False, "hub": False} if "hub" in settings else {"sync": False})
    return config_dir
