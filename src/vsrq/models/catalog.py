"""The catalogue of model families and named models: build, load, and find a module's host.

Importing this module imports every family, which registers its host (:func:`vsrq.models.host.register_host`).
A name resolves to its family's loader; a checkpoint path to the first family whose host recognizes its
tensors; a module to the host registered for its class.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from vsrq.errors import VsrqError
from vsrq.models import animesr, basicvsr  # noqa: F401  (importing a family registers its host)
from vsrq.models.host import ARCHITECTURES, HOSTS, NAMED_MODELS, UNTRAINED_MODELS, ModelHost, ModelSpec
from vsrq.models.mgldvsr import host as mgldvsr_host  # noqa: F401
from vsrq.models.weights import extract_state_dict, load_state_dict_strict, read_checkpoint

__all__ = ["HOSTS", "NAMED_MODELS", "UNTRAINED_MODELS", "LoadedModel", "build_model", "host_for", "load_model",
           "loaded_module"]


@dataclass
class LoadedModel:
    """A full-precision model, its family's host, and the facts later steps record in manifests."""

    model: nn.Module
    host: ModelHost
    spec: ModelSpec | None  # None: a user's module its host cannot rebuild (load its checkpoints with model=...)
    name: str
    weights_path: str | None
    degradation: str | None


def host_for(model: nn.Module, host: ModelHost | str | None = None) -> ModelHost:
    """The host of ``model``: the one given (an object or a registered family name), else the one registered
    for its class, else one clear error."""
    if isinstance(host, ModelHost):
        return host
    if isinstance(host, str):
        if host not in HOSTS:
            raise VsrqError(f"unknown model family {host!r}; known: {', '.join(sorted(HOSTS))}")
        return HOSTS[host]
    own = getattr(model, "host", None)  # a quantized model carries its host
    if isinstance(own, ModelHost):
        return own
    for candidate in HOSTS.values():
        if isinstance(model, candidate.module_types):
            return candidate
    raise VsrqError(f"no model host for {type(model).__name__}: pass host= (a vsrq.models.host.ModelHost, or one of "
                    f"{', '.join(sorted(HOSTS))}) or register one with @register_host")


def build_model(spec: ModelSpec) -> nn.Module:
    if spec.arch not in ARCHITECTURES:
        raise VsrqError(f"unknown architecture {spec.arch!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    builder, _ = ARCHITECTURES[spec.arch]
    return builder(**spec.kwargs)


def loaded_module(model: nn.Module, host: ModelHost | str | None = None, name: str | None = None) -> LoadedModel:
    """A module the caller built and loaded itself, with its host and (when the host can say) its spec."""
    found = host_for(model, host)
    return LoadedModel(model.eval(), found, found.spec_of(model), name or type(model).__name__, None, None)


def load_model(name_or_path: str) -> LoadedModel:
    """Build and load a model from a short name (``basicvsr-vimeo-bi``) or a weights file."""
    if name_or_path in NAMED_MODELS:
        named, host = NAMED_MODELS[name_or_path]
        model, path = host.load_named(name_or_path, named)
        return LoadedModel(model, host, host.named_spec(named, model), name_or_path, path, named.degradation)
    path = Path(name_or_path)
    if not path.exists():
        raise VsrqError(f"unknown model {name_or_path!r}: not a file and not one of {', '.join(sorted(NAMED_MODELS))}")
    if path.is_dir():
        raise VsrqError(f"{path} is a folder; pass a weights file or a model name")
    if path.suffix == ".safetensors":  # a file that carries its own architecture in its metadata
        for host in HOSTS.values():
            model = host.load_file(path)
            if model is not None:
                loaded = loaded_module(model, host, str(path))
                loaded.weights_path = str(path)
                return loaded
        raise VsrqError(f"{path}: no model family reads this safetensors file")
    raw = extract_state_dict(read_checkpoint(path), str(path))
    for host in HOSTS.values():
        state = host.convert_state(raw)
        spec = host.spec_from_state(state)
        if spec is not None:
            model = build_model(spec)
            load_state_dict_strict(model, state, str(path))
            return LoadedModel(model.eval(), host, spec, name_or_path, str(path), None)
    raise VsrqError(f"{path}: its tensors fit no known model family ({', '.join(sorted(HOSTS))})")
