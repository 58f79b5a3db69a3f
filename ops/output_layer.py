"""A deepmd-kit energy model's output layer as a linear model, and its feature rows.

With the descriptor and every hidden fitting layer frozen, the energy is linear in the output layer:
E = sum_t (w_t . H_t + n_t c_t), H_t the sum over the atoms of type t of their last hidden layer h_i (one fitting
net per type; one shared net and one w for type-embedding descriptors), n_t the atoms of type t and c_t the
type's constant (the layer's bias plus deepmd-kit's per-type energy biases). Forces -dE/dx and the virial
-dE/d(strain) are linear in w too. The parameter vector is theta = [w_0, ..., w_{T-1}, c_0, ..., c_{T-1}].

The rows come from deepmd-kit itself: the model's serialized form (any backend's frozen model) becomes a
PyTorch module, a forward hook reads each net's last hidden layer, and batched vector-Jacobian products give
the force and virial rows of many frames at once.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# descriptors whose PyTorch modules come from deepmd-kit's serialized form (TensorFlow and PyTorch models)
SUPPORTED_DESCRIPTORS = ("se_e2_a", "se_a", "se_e2_r", "se_r", "se_e3", "se_at", "se_a_3be", "se_atten",
                         "se_atten_v2", "dpa1", "dpa2", "dpa3", "se_a_ebd_v2", "se_a_tpe_v2", "hybrid")
MODEL_SUFFIXES = (".pb", ".pth", ".pt", ".dp")


def load_model_dict(path: str | Path) -> dict:
    """The serialized form of a model file (.pb TensorFlow, .pth/.pt PyTorch, .dp deepmd-kit's own)."""
    path = str(path)
    if path.endswith(".pb"):
        from deepmd.tf.utils.serialization import serialize_from_file  # TensorFlow: imported only here
    elif path.endswith((".pth", ".pt")):
        from deepmd.pt.utils.serialization import serialize_from_file
    elif path.endswith(".dp"):
        from deepmd.dpmodel.utils.serialization import load_dp_model as serialize_from_file
    else:
        raise ValueError(f"{path}: expected a model file ending in one of {MODEL_SUFFIXES}")
    return serialize_from_file(path)


def save_model_dict(path: str | Path, data: dict) -> None:
    """Write the serialized form as a model file of the backend its suffix names."""
    path = str(path)
    if path.endswith(".pb"):
        from deepmd.tf.utils.serialization import deserialize_to_file
    elif path.endswith(".pth"):
        from deepmd.pt.utils.serialization import deserialize_to_file
    elif path.endswith(".dp"):
        from deepmd.dpmodel.utils.serialization import save_dp_model as deserialize_to_file
    else:
        raise ValueError(f"{path}: expected a model file ending in .pb, .pth or .dp")
    deserialize_to_file(path, data)


def check_linear_model(data: dict, where: str) -> None:
    """The model is an energy model whose output layer alone makes the energy linear (else ValueError)."""
    model = data["model"]
    if model.get("type", "standard") != "standard" or "fitting" not in model:
        raise ValueError(f"{where}: a {model.get('type')!r} model; the exact output-layer fit takes standard "
                         "energy models (train_style \"sgd\" trains any model)")
    fitting = model["fitting"]
    if fitting.get("type", "ener") != "ener" or fitting.get("dim_out", 1) != 1:
        raise ValueError(f"{where}: fitting type {fitting.get('type')!r}; the exact fit takes 'ener' fittings")
    descriptor = model["descriptor"].get("type")
    if descriptor not in SUPPORTED_DESCRIPTORS:
        raise ValueError(f"{where}: descriptor {descriptor!r}; the exact fit takes {list(SUPPORTED_DESCRIPTORS)}")
    for key in ("numb_fparam", "numb_aparam", "dim_case_embd"):
        if fitting.get(key):
            raise ValueError(f"{where}: fitting_net.{key} = {fitting[key]}; the exact fit takes models without "
                             "frame or atomic parameters")
    if fitting.get("atom_ener") or fitting.get("exclude_types") or model.get("atom_exclude_types"):
        raise ValueError(f"{where}: atom_ener or exclude_types set; the exact fit takes models without them")


@dataclass(frozen=True)
class OutputLayer:
    """Where theta lives in a serialized model: each net's last layer (w, b) and the per-type energy biases."""

    ntypes: int
    width: int  # K, the last hidden layer's width
    mixed: bool  # one net for every type (type-embedding descriptors)

    @classmethod
    def of(cls, data: dict) -> "OutputLayer":
        fitting = data["model"]["fitting"]
        nets = fitting["nets"]["networks"]
        mixed = bool(fitting.get("mixed_types"))
        width = int(np.asarray(nets[0]["layers"][-1]["@variables"]["w"]).shape[0])
        return cls(ntypes=int(fitting["ntypes"]), width=width, mixed=mixed)

    @property
    def n_weights(self) -> int:
        return self.width * (1 if self.mixed else self.ntypes)

    @property
    def size(self) -> int:
        return self.n_weights + self.ntypes

    def _last_layers(self, data: dict) -> list[dict]:
        return [net["layers"][-1]["@variables"] for net in data["model"]["fitting"]["nets"]["networks"]]

    def _type_biases(self, data: dict) -> np.ndarray:
        """bias_atom_e + the model's out_bias (both per type, added to every atom's output)."""
        bias = np.asarray(data["model"]["fitting"]["@variables"]["bias_atom_e"], dtype=float).reshape(self.ntypes)
        out = data["model"].get("@variables", {}).get("out_bias")
        if out is not None:
            bias = bias + np.asarray(out, dtype=float).reshape(-1, self.ntypes)[0]
        out_std = data["model"].get("@variables", {}).get("out_std")
        if out_std is not None and not np.allclose(np.asarray(out_std, dtype=float), 1.0):
            raise ValueError("the model scales its energy output (out_std != 1); the exact fit takes unscaled ones")
        return bias

    def params(self, data: dict) -> np.ndarray:
        """theta of a serialized model."""
        layers = self._last_layers(data)
        w = [np.asarray(layer["w"], dtype=float).reshape(-1) for layer in layers]
        b = np.array([float(np.asarray(layers[0 if self.mixed else t]["b"]).reshape(-1)[0])
                      for t in range(self.ntypes)])
        return np.concatenate(w + [b + self._type_biases(data)])

    def with_params(self, data: dict, theta: np.ndarray, type_map: list[str] | None = None) -> dict:
        """A copy of the serialized model with theta written in (and the type names `type_map`, if given)."""
        theta = np.asarray(theta, dtype=float)
        if theta.shape != (self.size,):
            raise ValueError(f"expected {self.size} output-layer parameters, got {theta.shape}")
        out = copy.deepcopy(data)
        layers = self._last_layers(out)
        weights, consts = theta[: self.n_weights].reshape(-1, self.width), theta[self.n_weights:]
        biases = self._type_biases(out)
        fit_vars = out["model"]["fitting"]["@variables"]
        for i, layer in enumerate(layers):
            layer["w"] = weights[i].reshape(np.shape(layer["w"])).astype(np.asarray(layer["w"]).dtype)
            if not self.mixed:
                layer["b"] = np.array([consts[i] - biases[i]], dtype=np.asarray(layer["b"]).dtype)
        if self.mixed:  # one b for all types: the per-type constants go into bias_atom_e
            b = float(np.asarray(layers[0]["b"]).reshape(-1)[0])
            old = np.asarray(fit_vars["bias_atom_e"], dtype=float).reshape(self.ntypes)
            fit_vars["bias_atom_e"] = (old + consts - b - biases).reshape(np.shape(fit_vars["bias_atom_e"]))
        if type_map is not None:
            _rename_types(out, list(type_map))
        return out


def _rename_types(data: dict, type_map: list[str]) -> None:
    """A similar material: the same types by index under new names (element_substitution)."""
    model = data["model"]
    for part in (model, model.get("descriptor", {}), model.get("fitting", {})):
        if "type_map" in part:
            part["type_map"] = list(type_map)
    if isinstance(data.get("model_def_script"), dict):
        data["model_def_script"]["type_map"] = list(type_map)


class _Linearized:
    """An embedding net replaced, for the backward pass only, by its Jacobian at the current inputs.

    The force rows need one backward pass per output-layer parameter; without this each pass would run back
    through the embedding net of every neighbor pair, the bulk of the cost. The net's input per pair is a few
    numbers (se_e2_a: one), so its Jacobian costs that many forward-mode passes, once; every backward pass
    then only multiplies by it. Values and derivatives are the net's own (tests compare with plain autograd)."""

    def __init__(self, forward):
        self.forward = forward

    def __call__(self, x):
        import torch

        if not x.requires_grad:
            return self.forward(x)
        xd = x.detach()
        columns = []
        for i in range(x.shape[-1]):
            tangent = torch.zeros_like(xd)
            tangent[..., i] = 1.0
            y, dy = torch.func.jvp(self.forward, (xd,), (tangent,))
            columns.append(dy)
        return _apply_jacobian(x, y, torch.stack(columns, -1))


def _apply_jacobian(x, y, jac):
    import torch

    class ApplyJacobian(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, y, jac):
            ctx.save_for_backward(jac)
            return y.clone()

        @staticmethod
        def backward(ctx, grad_y):
            (jac,) = ctx.saved_tensors
            return torch.einsum("...o,...oi->...i", grad_y, jac), None, None

    return ApplyJacobian.apply(x, y, jac)


class FeatureModel:
    """The energy rows (per-type sums of the last hidden layer), force rows and virial rows of frames, from the
    PyTorch module of a serialized model."""

    def __init__(self, data: dict, linearize: bool = True):
        import torch  # deferred: torch and deepmd-kit's PyTorch backend take seconds to import
        from deepmd.pt.model.model import BaseModel
        from deepmd.pt.model.network.mlp import EmbeddingNet

        self.torch = torch
        self.layer = OutputLayer.of(data)
        self.model = BaseModel.deserialize(copy.deepcopy(data["model"])).eval()
        self.atomic = self.model.atomic_model
        self._hidden: dict[int, object] = {}
        nets = self.atomic.fitting_net.filter_layers.networks
        for t, net in enumerate(nets):
            net.layers[-1].register_forward_hook(self._keep_input(t))
        if linearize:  # on this private module only (the descriptor calls `net.forward` itself)
            for module in self.atomic.descriptor.modules():
                if isinstance(module, EmbeddingNet):
                    module.forward = _Linearized(module.forward)

    def _keep_input(self, t: int):
        def hook(module, inputs, output):
            self._hidden[t] = inputs[0]
        return hook

    def rows(self, coords: np.ndarray, cells: np.ndarray | None, atype: np.ndarray,
             virial: bool = True) -> dict[str, np.ndarray]:
        """Rows of `nf` frames of one system: energy (nf, P), force (nf, 3N, P), virial (nf, 9, P) when
        asked, and the model's own energy (nf,) as a check."""
        torch = self.torch
        from deepmd.pt.utils.nlist import extend_input_and_build_neighbor_list

        nf, natoms = coords.shape[0], len(atype)
        coord = torch.tensor(coords.reshape(nf, natoms, 3), dtype=torch.float64, requires_grad=True)
        strain = torch.zeros(nf, 3, 3, dtype=torch.float64, requires_grad=True)
        deform = torch.eye(3, dtype=torch.float64) + strain
        box = None if cells is None else torch.tensor(cells.reshape(nf, 3, 3), dtype=torch.float64) @ deform
        types = torch.tensor(np.tile(atype, (nf, 1)), dtype=torch.long)
        ext, ext_types, mapping, nlist = extend_input_and_build_neighbor_list(
            coord @ deform, types, self.atomic.get_rcut(), self.atomic.get_sel(),
            mixed_types=self.atomic.mixed_types(), box=box)
        self._hidden.clear()
        energy = self.atomic.forward_common_atomic(ext, ext_types, nlist, mapping=mapping)["energy"].sum(dim=(1, 2))
        sums = self._type_sums(types)  # (nf, n_weights)
        counts = torch.stack([(types == t).sum(1) for t in range(self.layer.ntypes)], 1).to(torch.float64)
        inputs = (coord, strain) if virial and cells is not None else (coord,)
        n = sums.shape[1]
        force = np.zeros((nf, 3 * natoms, self.layer.size))
        vir = np.zeros((nf, 9, self.layer.size))
        for k in range(n):  # one backward pass per weight; a frame's sum only depends on its own coordinates
            parts = torch.autograd.grad(sums[:, k].sum(), inputs, retain_graph=k < n - 1)
            force[:, :, k] = -parts[0].reshape(nf, 3 * natoms).numpy()
            if len(parts) == 2:
                vir[:, :, k] = -parts[1].reshape(nf, 9).numpy()
        out = {"energy": np.concatenate([sums.detach().numpy(), counts.numpy()], 1), "force": force,
               "model_energy": energy.detach().numpy()}
        if len(inputs) == 2:
            out["virial"] = vir
        return out

    def _type_sums(self, types):
        """H_t per frame: the hidden outputs of type t's net summed over type t's atoms (mixed: over all)."""
        torch = self.torch
        nets = len(self.atomic.fitting_net.filter_layers.networks)
        if len(self._hidden) != nets:
            raise ValueError("the fitting net's output layer was not called once per net: not a linear model")
        if self.layer.mixed:
            return self._hidden[0].sum(1)
        return torch.cat([torch.where((types == t)[:, :, None], self._hidden[t], 0.0).sum(1)
                          for t in range(self.layer.ntypes)], 1)
