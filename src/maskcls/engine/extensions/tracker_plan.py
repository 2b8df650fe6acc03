"""Which experiment trackers a run uses, checked before its run directory exists.

Never a network wait: a missing package is a ConfigError naming the pip extra
(``pip install 'maskcls[wandb]'``); W&B runs offline unless logged in (WANDB_API_KEY or
``wandb login``) and its server answers within 2 s, or fails at once when ``online`` was asked
for and it does not; an http(s) MLflow server must answer within 3 s. The plan also says where
the default MLflow store lies: one SQLite file beside the run directories, so runs compare.
"""
from __future__ import annotations

import importlib
import netrc
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from ...config import RunConfig
from ...errors import ConfigError
from ...fsutil import can_connect

WANDB_URL = "https://api.wandb.ai"
# what each tracker imports, and the pip extra that installs it
REQUIRES = {"tensorboard": [("tensorboard", "tensorboard")], "wandb": [("wandb", "maskcls[wandb]")],
            "mlflow": [("mlflow", "maskcls[mlflow]")]}


@dataclass
class TrackerPlan:
    """Which trackers a run uses and how they reach their stores (decided before the run starts)."""
    names: list[str]
    project: str = "maskcls"
    wandb_mode: str | None = None    # online | offline | disabled
    mlflow_uri: str | None = None    # None: the SQLite store beside the run directory
    ids: dict = field(default_factory=dict)  # tracker runs to continue (resume), from run.json

    def mlflow_store(self, run: Path) -> tuple[str, str | None]:
        """(tracking URI, artifact location): the default is one SQLite store beside the run directories,
        so that runs can be compared side by side (``mlflow ui --backend-store-uri sqlite:///…``)."""
        if self.mlflow_uri is not None:
            return self.mlflow_uri, None
        base = Path(run).resolve().parent
        return f"sqlite:///{base / 'mlflow.db'}", (base / "mlartifacts").as_uri()

    def describe(self, run: Path) -> str:
        """One line for the start banner: where each tracker writes."""
        where = {"tensorboard": "tensorboard (fold*/tb)", "wandb": f"wandb {self.wandb_mode} (project {self.project})",
                 "mlflow": f"mlflow {self.mlflow_store(run)[0]} (experiment {self.project})"}
        return ", ".join(where[n] for n in self.names) or "none"


def _require(module: str, extra: str, tracker: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(f"run.trackers includes {tracker}, but {module} cannot be imported ({e}); "
                          f"pip install '{extra}', or leave it out: --set run.trackers=[tensorboard]") from None


def reachable(url: str, timeout: float) -> bool:
    """True when ``url``'s host accepts a TCP connection within ``timeout`` seconds."""
    u = urlparse(url)
    if not u.hostname:
        return False
    return can_connect(u.hostname, u.port or (443 if u.scheme == "https" else 80), timeout)


def _wandb_logged_in(base_url: str) -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(urlparse(base_url).hostname or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_wandb_mode(choice: str) -> str:
    """``run.wandb_mode`` → online / offline / disabled, without waiting on a network."""
    base = os.environ.get("WANDB_BASE_URL", WANDB_URL)
    if choice == "online":
        if not reachable(base, 2.0):
            raise ConfigError(f"run.wandb_mode=online, but {base} is unreachable; use run.wandb_mode=offline "
                              "(upload later with `wandb sync`) or auto")
        return "online"
    if choice == "offline":
        return "offline"
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env:
        return "offline" if env == "dryrun" else env
    return "online" if _wandb_logged_in(base) and reachable(base, 2.0) else "offline"


def resolve_mlflow_uri(uri: str | None) -> str | None:
    """``run.mlflow_uri`` → a tracking URI (None: the local SQLite store, placed once the run exists)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or None
    if uri is None or "://" in uri or uri.startswith(("sqlite:", "file:", "databricks")):
        return uri
    p = Path(uri).expanduser().resolve()
    return f"sqlite:///{p}" if p.suffix in (".db", ".sqlite") else p.as_uri()


def plan_trackers(run: RunConfig, ids: dict | None = None) -> TrackerPlan:
    """Check what ``run.trackers`` needs (packages, servers) and decide modes; raises ConfigError.

    Args:
        run: the run section (``tracker_list()`` applies the legacy ``tensorboard`` switch).
        ids: tracker run ids recorded in run.json, to continue them (resume).
    """
    plan = TrackerPlan(run.tracker_list(), project=run.project, ids=dict(ids or {}))
    for name in plan.names:
        for module, extra in REQUIRES[name]:
            _require(module, extra, name)
    if "wandb" in plan.names:
        plan.wandb_mode = resolve_wandb_mode(run.wandb_mode)
    if "mlflow" in plan.names:
        plan.mlflow_uri = resolve_mlflow_uri(run.mlflow_uri)
        uri = plan.mlflow_uri or "sqlite://"
        if uri.startswith("sqlite:"):
            _require("sqlalchemy", "maskcls[mlflow]", "mlflow (its SQLite store)")
        if uri.startswith(("http://", "https://")) and not reachable(uri, 3.0):
            raise ConfigError(f"run.mlflow_uri={uri} is unreachable; start the server, or use a local store "
                              "(run.mlflow_uri=null)")
    return plan
