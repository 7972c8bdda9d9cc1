"""Build a model from a golden ``*_forward.npz`` case of the published implementation."""
import numpy as np
import torch

from rsnn_bfd.network.model import InitialState, ModelConfig, build_model


def unpack_bits(packed, n):
    return np.unpackbits(packed, axis=-1, count=n).astype(bool)


def model_from_case(case, dtype=torch.float64, engine="reference", device="cpu"):
    """(model, x, labels, state) reproducing the network stored in ``case`` (an NpzFile)."""
    encoder = "spiking" if "fc_f_w" in case.files else "realvalued"
    cfg = ModelConfig(encoder=encoder, init_b=float(case["init_b"]),
                      init_w=float(case["init_w"]))
    model = build_model(cfg, dtype=dtype, engine=engine)   # filled on the CPU, then moved
    n = model.n_neurons
    np.testing.assert_array_equal(case["pop_size"], model.anatomy.sizes)
    np.testing.assert_array_equal(case["pre_sign"], model.anatomy.pre_sign)

    def t(name):
        return torch.as_tensor(np.asarray(case[name], dtype=np.float64), dtype=dtype)

    mask = unpack_bits(case["W_rec_mask_packed"], n)
    values = np.zeros((n, n))
    values[np.nonzero(mask)] = case["W_rec_vals"]
    with torch.no_grad():
        model.recurrent.set_connections(torch.as_tensor(mask),
                                        torch.as_tensor(values, dtype=dtype))
        w_th = t("W_th")
        model.thalamocortical.set_connections(w_th != 0, w_th)
        if encoder == "spiking":
            for layer, key in ((model.encoder.force, "fc_f"), (model.encoder.torque, "fc_t")):
                layer.weight.copy_(t(key + "_w"))
                layer.bias.copy_(t(key + "_b"))
        else:
            model.encoder.fc.weight.copy_(t("fc_w"))
            model.encoder.fc.bias.copy_(t("fc_b"))
        model.thalamus_input.weight.copy_(t("thal_w"))
        model.thalamus_input.bias.copy_(t("thal_b"))
        for name in ("thal_tau_m", "thal_tau_adp", "tau_m", "tau_adp"):
            getattr(model, name).copy_(t(name))
        model.readout[0].weight.copy_(t("ro1_w"))
        model.readout[0].bias.copy_(t("ro1_b"))
        model.readout[1].weight.copy_(t("ro2_w"))
        model.readout[1].bias.copy_(t("ro2_b"))
    model.to(device)
    x = t("input").to(device)
    labels = torch.as_tensor(case["labels"]).to(device)
    state = InitialState(*(t(k).to(device) for k in
                           ("init_mem_thal", "init_spk_thal", "init_mem", "init_spk")))
    return model, x, labels, state


def expected_spikes(case):
    """(T, B, 4218) bool spikes of the published run."""
    n = case["spikes_t0"].shape[1]
    rest = unpack_bits(case["spikes_packed"], n)
    return np.concatenate([case["spikes_t0"][None].astype(bool), rest], axis=0)


def recurrent_value_grad(model, case):
    """Gradient w.r.t. the non-negative recurrent values, in the published nonzero order."""
    n = model.n_neurons
    mask = unpack_bits(case["W_rec_mask_packed"], n)
    return model.recurrent.weight.grad.cpu().numpy()[np.nonzero(mask)]


def encoder_weight_grad(model):
    enc = model.encoder
    layer = enc.force if hasattr(enc, "force") else enc.fc
    return layer.weight.grad.cpu().numpy()
